//! The membership planner: a pure function from what the operator observed (spec, etcd member
//! list, StatefulSet, pods, claims, and the step recorded in status) to the single next step.
//!
//! Membership is the source of truth: the StatefulSet's replica count follows the member list,
//! never the reverse. Steps are chosen so that any prefix of them, cut by an operator crash at
//! any point, is resumed by planning again from fresh observations:
//!
//! - scale up: `AddLearner(k)` -> `SetReplicas(k+1)` -> wait for the learner -> `Promote`;
//! - scale down: `MoveLeader` (if the victim leads) -> `Remove` -> `SetReplicas(k)` ->
//!   `DeletePvc(k)` when the retention policy says so;
//! - repair of a member whose pod keeps failing while the member is unreachable:
//!   `RemoveForRepair` -> `Wipe` (delete its claim, then its pod) -> `AddLearner` -> ... ->
//!   `Promote`. With claims, the old claim stays in deletion until the old pod is gone. The
//!   StatefulSet controller of 1.20 then refuses to recreate the pod ("pvc ... is being
//!   deleted"); one that does recreate it leaves a pod that is never scheduled and, once the old
//!   claim is gone, never gets a new one. So the wipe waits until the old claim is gone, then
//!   deletes a pod made in the meantime (another `Wipe`), and is done when the ordinal has a live
//!   claim and a pod other than the one recorded.
//! - bootstrap: `Bootstrap` (one member), then scale up.
//!
//! Only the repair needs the recorded step: after the removal, a pod without a member below
//! `replicas` looks like any member to be added, and must first lose its stale data.
//!
//! This module never performs I/O and never reads a clock.

use crate::crd::{Action, Operation};

/// One etcd member as observed through the member list and a per-member status call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedMember {
    /// etcd member ID.
    pub id: u64,
    /// Member name; empty for a learner that has not started yet.
    pub name: String,
    /// StatefulSet ordinal parsed from the peer URL; `None` for a member the operator did not
    /// create (another host name).
    pub ordinal: Option<u32>,
    /// Whether it is a learner.
    pub learner: bool,
    /// Whether its own Status call answered.
    pub healthy: bool,
    /// Whether it is the raft leader.
    pub leader: bool,
}

impl ObservedMember {
    /// Whether the member's server has started and published its name.
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// One member pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPod {
    /// StatefulSet ordinal.
    pub ordinal: u32,
    /// Pod UID.
    pub uid: String,
    /// Ready condition.
    pub ready: bool,
    /// Running but not ready for longer than the spec's `repairAfterSeconds`.
    pub failing: bool,
}

/// Everything the planner decides from.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// `spec.replicas`.
    pub desired: i32,
    /// The member list with health, or `None` when no member answered.
    pub members: Option<Vec<ObservedMember>>,
    /// `spec.replicas` of the StatefulSet, `None` when it does not exist.
    pub statefulset_replicas: Option<u32>,
    /// Member pods that exist (terminating ones excluded).
    pub pods: Vec<ObservedPod>,
    /// Ordinals of the data claims that exist (being deleted ones excluded).
    pub pvc_ordinals: Vec<u32>,
    /// Ordinals of the data claims that are being deleted.
    pub pvc_terminating: Vec<u32>,
    /// Members keep their data in claims (not emptyDir).
    pub uses_pvcs: bool,
    /// `pvcRetentionPolicy.whenScaled == Delete`.
    pub delete_pvcs_when_scaled: bool,
    /// The cluster bootstrapped at some point (status has a cluster ID).
    pub bootstrapped: bool,
    /// Number of members last recorded in status.
    pub known_members: u32,
    /// The step recorded in status.
    pub pending: Option<Operation>,
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write the bootstrap ConfigMap (`new`, member 0 only) and create the StatefulSet with one
    /// replica.
    Bootstrap,
    /// Update the ConfigMap (`existing`, members plus this one), then `MemberAdd` as learner with
    /// the peer URL of this ordinal.
    AddLearner {
        /// Ordinal of the new member.
        ordinal: u32,
    },
    /// Set the StatefulSet's replicas.
    SetReplicas {
        /// New replica count.
        replicas: u32,
    },
    /// `MemberPromote`.
    Promote {
        /// Learner ID.
        id: u64,
        /// Its ordinal.
        ordinal: u32,
    },
    /// `MoveLeader` from the victim of a scale-down.
    MoveLeader {
        /// Current leader.
        from: u64,
        /// New leader.
        to: u64,
    },
    /// `MemberRemove`.
    Remove {
        /// Member ID.
        id: u64,
        /// Its ordinal (`None` never happens for removals the planner chooses, kept for logs).
        ordinal: u32,
        /// The member is removed to be wiped and added again, not scaled away.
        repair: bool,
    },
    /// Delete the claim of a removed member, then its pod (only if it still has this UID).
    Wipe {
        /// Ordinal.
        ordinal: u32,
        /// UID of the pod to delete, if one exists.
        pod_uid: Option<String>,
    },
    /// Delete the claim of a member that scaled away.
    DeletePvc {
        /// Ordinal of the claim.
        ordinal: u32,
    },
    /// Nothing to do until something changes (a pod starting, a learner catching up).
    Wait {
        /// CamelCase reason.
        reason: &'static str,
        /// Detail.
        message: String,
    },
    /// The spec cannot be honoured safely now; reported as a condition and an Event.
    Blocked {
        /// CamelCase reason.
        reason: &'static str,
        /// Detail.
        message: String,
    },
    /// Membership, StatefulSet and claims match the spec.
    Converged,
}

impl Step {
    /// Whether the step changes membership or children (and so is recorded first).
    pub fn action(&self) -> Option<Action> {
        Some(match self {
            Step::Bootstrap => Action::Bootstrap,
            Step::AddLearner { .. } => Action::AddLearner,
            Step::SetReplicas { .. } => Action::SetReplicas,
            Step::Promote { .. } => Action::Promote,
            Step::MoveLeader { .. } => Action::MoveLeader,
            Step::Remove { repair: false, .. } => Action::Remove,
            Step::Remove { repair: true, .. } => Action::RemoveForRepair,
            Step::Wipe { .. } => Action::Wipe,
            Step::DeletePvc { .. } => Action::DeletePvc,
            Step::Wait { .. } | Step::Blocked { .. } | Step::Converged => return None,
        })
    }

    /// The record written to status before the step is carried out.
    pub fn operation(&self, started_at: &str) -> Option<Operation> {
        let action = self.action()?;
        let mut op = Operation {
            action,
            ordinal: None,
            member_id: None,
            target_id: None,
            replicas: None,
            pod_uid: None,
            started_at: started_at.to_owned(),
        };
        match self {
            Step::Bootstrap => op.ordinal = Some(0),
            Step::AddLearner { ordinal } | Step::DeletePvc { ordinal } => {
                op.ordinal = Some(*ordinal as i32)
            }
            Step::SetReplicas { replicas } => op.replicas = Some(*replicas as i32),
            Step::Promote { id, ordinal } => {
                op.member_id = Some(format!("{id:x}"));
                op.ordinal = Some(*ordinal as i32);
            }
            Step::MoveLeader { from, to } => {
                op.member_id = Some(format!("{from:x}"));
                op.target_id = Some(format!("{to:x}"));
            }
            Step::Remove { id, ordinal, .. } => {
                op.member_id = Some(format!("{id:x}"));
                op.ordinal = Some(*ordinal as i32);
            }
            Step::Wipe { ordinal, pod_uid } => {
                op.ordinal = Some(*ordinal as i32);
                op.pod_uid = pod_uid.clone();
            }
            Step::Wait { .. } | Step::Blocked { .. } | Step::Converged => {}
        }
        Some(op)
    }
}

/// Votes needed for a quorum of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Chooses the next step. Pure: the same observation always gives the same step.
pub fn plan(obs: &Observation) -> Step {
    if obs.desired < 1 {
        return Step::Blocked {
            reason: "InvalidSpec",
            message: format!("spec.replicas is {}; it must be at least 1", obs.desired),
        };
    }
    let desired = obs.desired as u32;
    let Some(members) = &obs.members else {
        return plan_unreachable(obs);
    };
    if let Some(m) = members.iter().find(|m| m.ordinal.is_none()) {
        return Step::Blocked {
            reason: "ForeignMember",
            message: format!(
                "member {:x} ({}) is not one of this cluster's pods; remove it by hand",
                m.id, m.name
            ),
        };
    }
    let ordinal = |m: &ObservedMember| m.ordinal.unwrap_or(0);
    let top = members.iter().map(|m| ordinal(m) + 1).max().unwrap_or(0);
    let sts = obs.statefulset_replicas.unwrap_or(0);
    let pod = |k: u32| obs.pods.iter().find(|p| p.ordinal == k);
    let member_at = |k: u32| members.iter().find(|m| m.ordinal == Some(k));

    // A repair in flight: the removed member's pod must lose its data before it is re-added.
    if let Some(op) = &obs.pending {
        let k = op.ordinal.unwrap_or(-1);
        if k >= 0 {
            let k = k as u32;
            match op.action {
                Action::RemoveForRepair => {
                    let id = op
                        .member_id
                        .as_deref()
                        .and_then(|h| u64::from_str_radix(h, 16).ok());
                    if let Some(m) = members.iter().find(|m| Some(m.id) == id) {
                        return Step::Remove {
                            id: m.id,
                            ordinal: k,
                            repair: true,
                        };
                    }
                    if member_at(k).is_none() {
                        return Step::Wipe {
                            ordinal: k,
                            pod_uid: pod(k).map(|p| p.uid.clone()),
                        };
                    }
                }
                Action::Wipe if member_at(k).is_none() => {
                    if let (Some(p), Some(uid)) = (pod(k), op.pod_uid.as_deref())
                        && p.uid == uid
                    {
                        return Step::Wipe {
                            ordinal: k,
                            pod_uid: Some(p.uid.clone()),
                        };
                    }
                    if obs.uses_pvcs && k < sts {
                        if obs.pvc_terminating.contains(&k) {
                            return Step::Wait {
                                reason: "ClaimDeleting",
                                message: format!(
                                    "waiting for the old claim of wiped member #{k} to be deleted"
                                ),
                            };
                        }
                        if !obs.pvc_ordinals.contains(&k) {
                            return match pod(k) {
                                // Made while the old claim was being deleted: it can never run.
                                Some(p) => Step::Wipe {
                                    ordinal: k,
                                    pod_uid: Some(p.uid.clone()),
                                },
                                None => Step::Wait {
                                    reason: "PodRecreating",
                                    message: format!(
                                        "waiting for the StatefulSet to recreate wiped member \
                                         #{k} with a new claim"
                                    ),
                                },
                            };
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // The StatefulSet follows membership: grow after a learner was added, shrink after a
    // member was removed (never below the spec: lower ordinals without members get re-added).
    // (A learner added beyond a since-lowered spec is removed below, never given a pod.)
    let top_in_spec = members
        .iter()
        .map(|m| ordinal(m) + 1)
        .filter(|&t| t <= desired)
        .max()
        .unwrap_or(0);
    if sts < top_in_spec {
        return Step::SetReplicas {
            replicas: top_in_spec,
        };
    }
    let floor = top.max(desired.min(sts));
    if sts > floor {
        return Step::SetReplicas { replicas: floor };
    }

    let voters: Vec<&ObservedMember> = members.iter().filter(|m| !m.learner).collect();

    // Repair: a member within the spec whose pod keeps failing while the member is unreachable.
    for m in members.iter().filter(|m| ordinal(m) < desired) {
        let failing = pod(ordinal(m)).is_some_and(|p| p.failing);
        if m.healthy || !failing {
            continue;
        }
        if !m.learner {
            let healthy_others = voters.iter().filter(|v| v.id != m.id && v.healthy).count();
            if healthy_others < quorum(voters.len() - 1) || voters.len() == 1 {
                return Step::Blocked {
                    reason: "RepairUnsafe",
                    message: format!(
                        "member {} is failing, but removing it would leave {healthy_others} healthy of {} voters",
                        pod_label(m),
                        voters.len() - 1
                    ),
                };
            }
        }
        return Step::Remove {
            id: m.id,
            ordinal: ordinal(m),
            repair: true,
        };
    }

    // Scale down: the highest ordinal beyond the spec goes first.
    if let Some(victim) = members
        .iter()
        .filter(|m| ordinal(m) >= desired)
        .max_by_key(|m| ordinal(m))
    {
        if victim.leader {
            let target = voters
                .iter()
                .filter(|v| v.id != victim.id && v.healthy && v.started() && ordinal(v) < desired)
                .min_by_key(|v| ordinal(v));
            return match target {
                Some(t) => Step::MoveLeader {
                    from: victim.id,
                    to: t.id,
                },
                None => Step::Blocked {
                    reason: "NoLeaderTarget",
                    message: format!(
                        "leader {} must be removed but no healthy voting member can take over",
                        pod_label(victim)
                    ),
                },
            };
        }
        if !victim.learner
            && let Some(sick) = voters.iter().find(|v| v.id != victim.id && !v.healthy)
        {
            return Step::Blocked {
                reason: "UnhealthyMembers",
                message: format!(
                    "not shrinking while member {} is unhealthy: removing {} could lose quorum",
                    pod_label(sick),
                    pod_label(victim)
                ),
            };
        }
        return Step::Remove {
            id: victim.id,
            ordinal: ordinal(victim),
            repair: false,
        };
    }

    // Claims of members that scaled away.
    if obs.delete_pvcs_when_scaled
        && let Some(&k) = obs
            .pvc_ordinals
            .iter()
            .filter(|&&k| k >= sts.max(desired) && pod(k).is_none() && member_at(k).is_none())
            .min()
    {
        return Step::DeletePvc { ordinal: k };
    }

    // A learner: promote it once its server runs; etcd refuses until it has caught up.
    if let Some(l) = members.iter().find(|m| m.learner) {
        if !l.started() || !l.healthy {
            return Step::Wait {
                reason: "LearnerStarting",
                message: format!("waiting for learner {} to start", pod_label(l)),
            };
        }
        return Step::Promote {
            id: l.id,
            ordinal: ordinal(l),
        };
    }

    // Scale up (or re-add a repaired member): one learner at a time, all voters healthy.
    if let Some(k) = (0..desired).find(|&k| member_at(k).is_none()) {
        if let Some(sick) = voters.iter().find(|v| !v.healthy) {
            return Step::Wait {
                reason: "MembersUnhealthy",
                message: format!(
                    "not adding member {k} while member {} is unhealthy",
                    pod_label(sick)
                ),
            };
        }
        return Step::AddLearner { ordinal: k };
    }

    if let Some(sick) = members.iter().find(|m| !m.healthy) {
        return Step::Wait {
            reason: "MembersUnhealthy",
            message: format!("member {} is unhealthy", pod_label(sick)),
        };
    }
    Step::Converged
}

/// No member answered: bootstrap a new cluster, recreate a deleted StatefulSet, or wait.
fn plan_unreachable(obs: &Observation) -> Step {
    match obs.statefulset_replicas {
        None | Some(0) if !obs.bootstrapped => Step::Bootstrap,
        None | Some(0) => Step::SetReplicas {
            replicas: obs.known_members.max(1),
        },
        Some(n) => Step::Wait {
            reason: if obs.bootstrapped {
                "NoQuorum"
            } else {
                "Bootstrapping"
            },
            message: format!("no member of {n} pod(s) answers yet"),
        },
    }
}

fn pod_label(m: &ObservedMember) -> String {
    match (m.started(), m.ordinal) {
        (true, _) => m.name.clone(),
        (false, Some(k)) => format!("#{k} ({:x})", m.id),
        (false, None) => format!("{:x}", m.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(k: u32) -> ObservedMember {
        ObservedMember {
            id: 0x100 + k as u64,
            name: format!("c-{k}"),
            ordinal: Some(k),
            learner: false,
            healthy: true,
            leader: k == 0,
        }
    }
    fn learner(k: u32, started: bool) -> ObservedMember {
        ObservedMember {
            name: if started {
                format!("c-{k}")
            } else {
                String::new()
            },
            learner: true,
            leader: false,
            healthy: started,
            ..member(k)
        }
    }
    fn pod(k: u32) -> ObservedPod {
        ObservedPod {
            ordinal: k,
            uid: format!("uid-{k}"),
            ready: true,
            failing: false,
        }
    }
    /// A converged cluster of `n` members, desired `n`.
    fn steady(n: u32) -> Observation {
        Observation {
            desired: n as i32,
            members: Some((0..n).map(member).collect()),
            statefulset_replicas: Some(n),
            pods: (0..n).map(pod).collect(),
            pvc_ordinals: (0..n).collect(),
            pvc_terminating: vec![],
            uses_pvcs: true,
            delete_pvcs_when_scaled: false,
            bootstrapped: true,
            known_members: n,
            pending: None,
        }
    }
    fn op(
        action: Action,
        ordinal: u32,
        member_id: Option<u64>,
        pod_uid: Option<&str>,
    ) -> Operation {
        Operation {
            action,
            ordinal: Some(ordinal as i32),
            member_id: member_id.map(|i| format!("{i:x}")),
            target_id: None,
            replicas: None,
            pod_uid: pod_uid.map(str::to_owned),
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }
    fn members_mut(o: &mut Observation) -> &mut Vec<ObservedMember> {
        o.members.as_mut().unwrap()
    }

    /// `o` after `edit`.
    fn with(mut o: Observation, edit: impl FnOnce(&mut Observation)) -> Observation {
        edit(&mut o);
        o
    }
    /// `steady(n)` with `desired` members asked for and `pending` recorded.
    fn asked(n: u32, desired: u32, pending: Option<Operation>) -> Observation {
        Observation {
            desired: desired as i32,
            pending,
            ..steady(n)
        }
    }
    /// A steady 3-member cluster in which member `k` was removed and its old pod `uid-k` is
    /// recorded for wiping; `replaced` gives the pod a new UID (not ready yet).
    fn wiping(k: u32, replaced: bool) -> Observation {
        with(
            asked(
                3,
                3,
                Some(op(Action::Wipe, k, None, Some(&format!("uid-{k}")))),
            ),
            |o| {
                members_mut(o).remove(k as usize);
                if replaced {
                    o.pods[k as usize].uid = format!("uid-{k}b");
                    o.pods[k as usize].ready = false;
                }
            },
        )
    }
    /// Removal of member `k` (id `0x100 + k`).
    fn remove(k: u32, repair: bool) -> Step {
        Step::Remove {
            id: 0x100 + u64::from(k),
            ordinal: k,
            repair,
        }
    }
    fn wipe(k: u32, uid: &str) -> Step {
        Step::Wipe {
            ordinal: k,
            pod_uid: Some(uid.into()),
        }
    }

    #[test]
    fn exact_steps() {
        let failing = |o: &mut Observation, k: usize| {
            members_mut(o)[k].healthy = false;
            o.pods[k].ready = false;
            o.pods[k].failing = true;
        };
        let repair_recorded = |k: u32| {
            asked(
                3,
                3,
                Some(op(
                    Action::RemoveForRepair,
                    k,
                    Some(0x100 + u64::from(k)),
                    None,
                )),
            )
        };
        let cases: Vec<(&str, Observation, Step)> = vec![
            (
                "new cluster bootstraps",
                Observation {
                    desired: 3,
                    ..Default::default()
                },
                Step::Bootstrap,
            ),
            ("converged", steady(3), Step::Converged),
            (
                "bootstrapped single member grows: learner for ordinal 1",
                asked(1, 3, None),
                Step::AddLearner { ordinal: 1 },
            ),
            (
                "learner added (crash before the StatefulSet grew): bump replicas",
                with(
                    asked(3, 4, Some(op(Action::AddLearner, 3, None, None))),
                    |o| members_mut(o).push(learner(3, false)),
                ),
                Step::SetReplicas { replicas: 4 },
            ),
            (
                "learner started and healthy: promote",
                with(asked(3, 4, None), |o| {
                    o.statefulset_replicas = Some(4);
                    members_mut(o).push(learner(3, true));
                    o.pods.push(pod(3));
                }),
                Step::Promote {
                    id: 0x103,
                    ordinal: 3,
                },
            ),
            (
                "promoted (crash before status update): next learner",
                asked(4, 5, Some(op(Action::Promote, 3, Some(0x103), None))),
                Step::AddLearner { ordinal: 4 },
            ),
            (
                "scale down: remove the highest ordinal first",
                asked(5, 3, None),
                remove(4, false),
            ),
            (
                "scale down of the leader: move leadership to the lowest healthy voter",
                with(asked(3, 2, None), |o| {
                    let ms = members_mut(o);
                    ms[0].leader = false;
                    ms[2].leader = true;
                }),
                Step::MoveLeader {
                    from: 0x102,
                    to: 0x100,
                },
            ),
            (
                "member removed (crash before shrink): shrink",
                with(
                    asked(4, 3, Some(op(Action::Remove, 3, Some(0x103), None))),
                    |o| {
                        members_mut(o).pop();
                    },
                ),
                Step::SetReplicas { replicas: 3 },
            ),
            (
                "shrunk, claim policy Delete: delete the claim once the pod is gone",
                with(steady(3), |o| {
                    o.delete_pvcs_when_scaled = true;
                    o.pvc_ordinals = vec![0, 1, 2, 3];
                }),
                Step::DeletePvc { ordinal: 3 },
            ),
            (
                "shrunk, claim policy Retain: keep it",
                with(steady(3), |o| o.pvc_ordinals = vec![0, 1, 2, 3]),
                Step::Converged,
            ),
            (
                "repair: failing unreachable member is removed for repair",
                with(steady(3), |o| failing(o, 1)),
                remove(1, true),
            ),
            (
                "repair removal done (crash before wipe): wipe the old pod",
                with(repair_recorded(1), |o| {
                    members_mut(o).remove(1);
                }),
                wipe(1, "uid-1"),
            ),
            (
                "repair removal recorded but not done: remove again",
                with(repair_recorded(1), |o| members_mut(o)[1].healthy = false),
                remove(1, true),
            ),
            (
                "repair of the highest member does not shrink the StatefulSet",
                with(repair_recorded(2), |o| {
                    members_mut(o).remove(2);
                }),
                wipe(2, "uid-2"),
            ),
            (
                "wipe recorded, old pod still there: wipe again",
                wiping(1, false),
                wipe(1, "uid-1"),
            ),
            (
                "wipe done (new pod UID): re-add under the same ordinal",
                wiping(1, true),
                Step::AddLearner { ordinal: 1 },
            ),
            (
                "wipe on claims: the pod made while the old claim was deleted is deleted",
                with(wiping(1, true), |o| o.pvc_ordinals.retain(|&k| k != 1)),
                wipe(1, "uid-1b"),
            ),
            (
                "wipe on emptyDir: no claim to wait for, re-add",
                with(wiping(1, true), |o| {
                    o.uses_pvcs = false;
                    o.pvc_ordinals = vec![];
                }),
                Step::AddLearner { ordinal: 1 },
            ),
            (
                "a member removed by hand (no record) is added back",
                with(steady(3), |o| {
                    members_mut(o).remove(1);
                }),
                Step::AddLearner { ordinal: 1 },
            ),
            (
                "unstarted learner beyond a lowered spec is removed",
                with(
                    asked(3, 3, Some(op(Action::AddLearner, 3, None, None))),
                    |o| members_mut(o).push(learner(3, false)),
                ),
                remove(3, false),
            ),
            (
                "StatefulSet deleted while members run: recreate at membership size",
                with(steady(3), |o| o.statefulset_replicas = None),
                Step::SetReplicas { replicas: 3 },
            ),
            (
                "StatefulSet and pods deleted after bootstrap: recreate from status",
                Observation {
                    desired: 3,
                    bootstrapped: true,
                    known_members: 3,
                    ..Default::default()
                },
                Step::SetReplicas { replicas: 3 },
            ),
            (
                "StatefulSet larger than membership and spec (pods without members): shrink",
                with(steady(3), |o| {
                    o.statefulset_replicas = Some(5);
                    o.pods = (0..5).map(pod).collect();
                }),
                Step::SetReplicas { replicas: 3 },
            ),
            (
                "member beyond StatefulSet and within spec (added, not yet scaled)",
                with(asked(1, 3, None), |o| {
                    o.statefulset_replicas = Some(1);
                    members_mut(o).push(learner(1, false));
                }),
                Step::SetReplicas { replicas: 2 },
            ),
        ];
        for (name, obs, want) in cases {
            assert_eq!(plan(&obs), want, "case: {name}");
        }
    }

    #[test]
    fn waits_and_refusals() {
        let unhealthy = |o: &mut Observation, k: usize, failing: bool| {
            members_mut(o)[k].healthy = false;
            o.pods[k].failing = failing;
        };
        let cases: Vec<(&str, Observation, &str)> = vec![
            ("replicas below 1", asked(1, 0, None), "Blocked InvalidSpec"),
            (
                "bootstrapping, member not up yet",
                Observation {
                    desired: 3,
                    statefulset_replicas: Some(1),
                    pending: Some(op(Action::Bootstrap, 0, None, None)),
                    ..Default::default()
                },
                "Wait Bootstrapping",
            ),
            (
                "bootstrapped but nothing answers",
                with(steady(3), |o| o.members = None),
                "Wait NoQuorum",
            ),
            (
                "learner's pod not started",
                with(asked(3, 4, None), |o| {
                    o.statefulset_replicas = Some(4);
                    members_mut(o).push(learner(3, false));
                }),
                "Wait LearnerStarting",
            ),
            (
                "shrinking while another voter is unhealthy (not yet failing long)",
                with(asked(3, 2, None), |o| unhealthy(o, 1, false)),
                "Blocked UnhealthyMembers",
            ),
            (
                "foreign member in the list",
                with(steady(3), |o| {
                    members_mut(o).push(ObservedMember {
                        ordinal: None,
                        ..member(7)
                    })
                }),
                "Blocked ForeignMember",
            ),
            (
                "repair that would lose quorum",
                with(steady(3), |o| {
                    unhealthy(o, 1, true);
                    unhealthy(o, 2, true);
                }),
                "Blocked RepairUnsafe",
            ),
            (
                "single member never repairs itself",
                with(steady(1), |o| unhealthy(o, 0, true)),
                "Blocked RepairUnsafe",
            ),
            (
                "unhealthy voter, not failing long enough: no add",
                with(asked(3, 4, None), |o| unhealthy(o, 2, false)),
                "Wait MembersUnhealthy",
            ),
            (
                "leader must go but nobody healthy can take over",
                with(asked(2, 1, None), |o| {
                    let ms = members_mut(o);
                    ms[0].leader = false;
                    ms[0].healthy = false;
                    ms[1].leader = true;
                }),
                "Blocked NoLeaderTarget",
            ),
            (
                "wipe on claims: the old claim is still being deleted",
                with(wiping(1, true), |o| {
                    o.pvc_ordinals.retain(|&k| k != 1);
                    o.pvc_terminating = vec![1];
                }),
                "Wait ClaimDeleting",
            ),
            (
                "wipe on claims: claim and pod gone, the StatefulSet recreates both",
                with(wiping(1, false), |o| {
                    o.pods.remove(1);
                    o.pvc_ordinals.retain(|&k| k != 1);
                }),
                "Wait PodRecreating",
            ),
            (
                "converged membership, one member unhealthy: wait, not converged",
                with(steady(3), |o| unhealthy(o, 2, false)),
                "Wait MembersUnhealthy",
            ),
        ];
        for (name, obs, want) in cases {
            let step = plan(&obs);
            let got = match &step {
                Step::Wait { reason, .. } => format!("Wait {reason}"),
                Step::Blocked { reason, .. } => format!("Blocked {reason}"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, want, "case {name}: got {step:?}");
        }
    }

    /// Drives a simulated cluster with the planner, crashing (dropping the effect) after every
    /// possible prefix of steps: every run still converges to the spec, never removes a voter
    /// that would lose quorum, and never has more than one learner.
    #[test]
    fn scale_up_and_down_converge_under_crashes() {
        for (from, to) in [(1u32, 3u32), (3, 5), (5, 3), (3, 1), (1, 5), (5, 1)] {
            for crash_at in 0..40 {
                let mut sim = Sim::new(from);
                sim.run(to, Some(crash_at));
                assert_eq!(
                    sim.members.len() as u32,
                    to,
                    "{from}->{to} crash at {crash_at}"
                );
                assert!(sim.members.iter().all(|m| !m.learner));
                assert_eq!(sim.sts, to);
                let mut ords: Vec<u32> = sim.members.iter().map(|m| m.ordinal.unwrap()).collect();
                ords.sort();
                assert_eq!(ords, (0..to).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn repair_converges_under_crashes() {
        for crash_at in 0..20 {
            let mut sim = Sim::new(3);
            sim.broken = Some(1);
            sim.run(3, Some(crash_at));
            assert_eq!(sim.members.len(), 3, "crash at {crash_at}");
            let m1 = sim.members.iter().find(|m| m.ordinal == Some(1)).unwrap();
            assert_ne!(m1.id, 0x101, "member 1 was re-added under a new ID");
            assert!(sim.members.iter().all(|m| m.healthy && !m.learner));
        }
    }

    /// Repair on claims: the pod recreated while the old claim is being deleted is never
    /// scheduled; the planner waits for the claim to go, deletes that pod, and re-adds the member
    /// only on a new claim, under every crash point.
    #[test]
    fn repair_with_claims_converges_on_a_new_claim_under_crashes() {
        for crash_at in 0..30 {
            for broken in [1u32, 2] {
                let mut sim = Sim::with_claims(3, broken);
                sim.run(3, Some(crash_at));
                let why = format!("member {broken}, crash at {crash_at}");
                assert_eq!(sim.members.len(), 3, "{why}");
                assert!(sim.members.iter().all(|m| m.healthy && !m.learner), "{why}");
                let (_, generation, deleting) = sim.claim(broken).unwrap();
                assert!(
                    deleting == 0 && generation != broken,
                    "{why}: old claim kept"
                );
                assert!(
                    sim.waited_for_claim,
                    "{why}: never saw the claim being deleted"
                );
                assert_eq!(sim.broken, None, "{why}");
                assert!(
                    sim.pods.iter().all(|p| !sim.held.contains(&p.uid)),
                    "{why}: a pod was left unscheduled"
                );
            }
        }
    }

    /// A toy cluster: membership, StatefulSet replicas, pods, and a status record.
    struct Sim {
        members: Vec<ObservedMember>,
        sts: u32,
        pods: Vec<ObservedPod>,
        pending: Option<Operation>,
        next_id: u64,
        next_uid: u32,
        /// Ordinal whose data is damaged until its pod is wiped (emptyDir) or it gets a new claim.
        broken: Option<u32>,
        /// Members keep data in claims: `(ordinal, generation, settles since its deletion began
        /// (0: not being deleted))`.
        claims: Option<Vec<(u32, u32, u32)>>,
        /// The claim generation whose data is damaged (with claims).
        broken_claim: Option<u32>,
        /// Pods never scheduled: made while their claim was being deleted.
        held: Vec<String>,
        /// The planner waited for a claim being deleted.
        waited_for_claim: bool,
    }

    impl Sim {
        fn new(n: u32) -> Sim {
            let mut s = steady(n);
            Sim {
                members: s.members.take().unwrap(),
                sts: n,
                pods: s.pods,
                pending: None,
                next_id: 0x200,
                next_uid: 100,
                broken: None,
                claims: None,
                broken_claim: None,
                held: vec![],
                waited_for_claim: false,
            }
        }

        /// A cluster of `n` members on claims, member `broken`'s data damaged.
        fn with_claims(n: u32, broken: u32) -> Sim {
            let mut sim = Sim::new(n);
            sim.claims = Some((0..n).map(|k| (k, k, 0)).collect());
            sim.broken = Some(broken);
            sim.broken_claim = Some(broken);
            sim
        }

        fn claim(&self, k: u32) -> Option<(u32, u32, u32)> {
            self.claims.as_ref()?.iter().copied().find(|c| c.0 == k)
        }

        /// Pods follow the StatefulSet (which makes a missing claim before the pod, and reuses a
        /// claim being deleted, as the 1.20 controller does); pods start their member. Claims
        /// being deleted go once no scheduled pod uses them, after the pods were recreated (the
        /// race that matters).
        fn settle(&mut self) {
            self.pods.retain(|p| p.ordinal < self.sts);
            for k in 0..self.sts {
                if !self.pods.iter().any(|p| p.ordinal == k) {
                    self.next_uid += 1;
                    let uid = format!("uid-{}", self.next_uid);
                    let existing = self.claim(k);
                    if let Some(claims) = &mut self.claims {
                        match existing {
                            None => {
                                self.next_uid += 1;
                                claims.push((k, self.next_uid, 0));
                            }
                            Some((_, _, 0)) => {}
                            Some(_) => self.held.push(uid.clone()),
                        }
                    }
                    self.pods.push(ObservedPod {
                        ordinal: k,
                        uid,
                        ready: true,
                        failing: false,
                    });
                }
            }
            if let Some(claims) = &mut self.claims {
                // The protection goes one settle after the last scheduled user.
                let pods = &self.pods;
                let held = &self.held;
                for c in claims.iter_mut().filter(|c| c.2 > 0) {
                    let used = pods
                        .iter()
                        .any(|p| p.ordinal == c.0 && !held.contains(&p.uid));
                    c.2 = if used { 1 } else { c.2 + 1 };
                }
                claims.retain(|c| c.2 < 3);
            }
            if let Some(claims) = &self.claims {
                // The damage lives in its claim.
                self.broken = self
                    .broken_claim
                    .and_then(|g| claims.iter().find(|c| c.1 == g))
                    .map(|c| c.0);
            }
            let held = self.held.clone();
            let runs = |pods: &[ObservedPod], k: u32| {
                pods.iter()
                    .any(|p| p.ordinal == k && !held.contains(&p.uid))
            };
            for m in &mut self.members {
                let k = m.ordinal.unwrap();
                let has_pod = runs(&self.pods, k);
                let broken = self.broken == Some(k);
                m.healthy = has_pod && !broken;
                if has_pod && !broken {
                    m.name = format!("c-{k}");
                }
            }
            for p in &mut self.pods {
                let broken = self.broken == Some(p.ordinal);
                let held = self.held.contains(&p.uid);
                p.ready = !broken && !held;
                p.failing = broken;
            }
            if !self.members.iter().any(|m| m.leader)
                && let Some(m) = self.members.iter_mut().find(|m| !m.learner && m.healthy)
            {
                m.leader = true;
            }
        }

        fn observe(&self, desired: u32) -> Observation {
            Observation {
                desired: desired as i32,
                members: Some(self.members.clone()),
                statefulset_replicas: Some(self.sts),
                pods: self.pods.clone(),
                pvc_ordinals: self
                    .claims
                    .iter()
                    .flatten()
                    .filter(|c| c.2 == 0)
                    .map(|c| c.0)
                    .collect(),
                pvc_terminating: self
                    .claims
                    .iter()
                    .flatten()
                    .filter(|c| c.2 > 0)
                    .map(|c| c.0)
                    .collect(),
                uses_pvcs: self.claims.is_some(),
                delete_pvcs_when_scaled: false,
                bootstrapped: true,
                known_members: self.members.len() as u32,
                pending: self.pending.clone(),
            }
        }

        fn run(&mut self, desired: u32, crash_at: Option<usize>) {
            for i in 0..200 {
                self.settle();
                let step = plan(&self.observe(desired));
                if step == Step::Converged {
                    return;
                }
                if matches!(
                    step,
                    Step::Wait {
                        reason: "ClaimDeleting",
                        ..
                    }
                ) {
                    self.waited_for_claim = true;
                }
                // Record first, as the controller does.
                if let Some(op) = step.operation("t") {
                    self.pending = Some(op);
                }
                // A crash at step `crash_at`: the recorded intent stays, the call is lost.
                if Some(i) == crash_at {
                    continue;
                }
                self.apply(&step);
            }
            panic!("did not converge: {:?}", self.members);
        }

        fn apply(&mut self, step: &Step) {
            let voters = self.members.iter().filter(|m| !m.learner).count();
            match step {
                Step::AddLearner { ordinal } => {
                    assert!(!self.members.iter().any(|m| m.learner), "second learner");
                    self.next_id += 1;
                    self.members.push(ObservedMember {
                        id: self.next_id,
                        name: String::new(),
                        ordinal: Some(*ordinal),
                        learner: true,
                        healthy: false,
                        leader: false,
                    });
                }
                Step::SetReplicas { replicas } => self.sts = *replicas,
                Step::Promote { id, .. } => {
                    let m = self.members.iter_mut().find(|m| m.id == *id).unwrap();
                    assert!(m.healthy && m.started());
                    m.learner = false;
                }
                Step::MoveLeader { from, to } => {
                    for m in &mut self.members {
                        m.leader = m.id == *to;
                    }
                    assert_ne!(from, to);
                }
                Step::Remove { id, .. } => {
                    let m = self.members.iter().find(|m| m.id == *id).unwrap().clone();
                    assert!(!m.leader, "removed the leader");
                    if !m.learner {
                        let healthy_after = self
                            .members
                            .iter()
                            .filter(|o| !o.learner && o.id != *id && o.healthy)
                            .count();
                        assert!(healthy_after >= quorum(voters - 1), "quorum lost");
                    }
                    self.members.retain(|o| o.id != *id);
                }
                Step::Wipe { ordinal, pod_uid } => {
                    // The claim first (protected while a scheduled pod uses it), then the pod
                    // with the recorded UID.
                    if let Some(claims) = &mut self.claims {
                        for c in claims.iter_mut().filter(|c| c.0 == *ordinal && c.2 == 0) {
                            c.2 = 1;
                        }
                    }
                    self.pods
                        .retain(|p| !(p.ordinal == *ordinal && Some(&p.uid) == pod_uid.as_ref()));
                    if self.claims.is_none() && self.broken == Some(*ordinal) {
                        self.broken = None;
                    }
                }
                Step::DeletePvc { .. } => {}
                Step::Wait {
                    reason: "ClaimDeleting" | "PodRecreating",
                    ..
                } => {}
                other => panic!("unexpected step {other:?}"),
            }
        }
    }
}
