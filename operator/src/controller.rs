//! The reconcile loop: for each `EtcdCluster`, observe (children, pods, claims, the etcd member
//! list and each member's health), ask the [`planner`](crate::planner) for the single next step,
//! record that step in `status.pendingOperation` *before* carrying it out, carry it out, and
//! requeue. A crash between any two of these is resumed by planning again from fresh
//! observations, never by repeating a recorded call blindly.
//!
//! Children are written by server-side apply (field manager `concord-operator`) with owner
//! references; the StatefulSet's replica count is only ever changed by a planner step. Deletion
//! runs behind the `concord.dev/cleanup` finalizer (claims are deleted there when
//! `pvcRetentionPolicy.whenDeleted` is `Delete`; everything else goes by garbage collection).
//!
//! This module must never dial a Service ClusterIP: members are reached by pod DNS names (see
//! [`Context::endpoint`]). With `spec.tls.clientSecretName` they are dialled over `https`,
//! verified with the Secret's `ca.crt` and presenting its `tls.crt`/`tls.key`, read afresh at
//! every reconcile (a rotated Secret is picked up); a Secret that is missing or lacks a key
//! blocks every step, and any roll-out of the StatefulSet template, with a Degraded
//! `ClientTlsSecretInvalid` condition. Secrets are watched: one that appears or changes
//! reconciles the clusters naming it in `spec.tls` at once ([`clusters_naming_secret`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::children::{self, MANAGER, Names};
use crate::crd::{Condition, EtcdCluster, EtcdClusterStatus, MemberStatus, PvcPolicy};
use crate::members::{self, MemberClient, MemberHealth, MemberTls};
use crate::metrics::{ActionLabels, ErrorLabels, Metrics};
use crate::planner::{self, Observation, ObservedMember, ObservedPod, Step};
use crate::{Error, Result};

/// Finalizer guarding deletion.
pub const FINALIZER: &str = "concord.dev/cleanup";

/// Requeue while a step is in flight.
const REQUEUE_BUSY: Duration = Duration::from_secs(2);
/// Requeue while waiting for pods or learners.
const REQUEUE_WAIT: Duration = Duration::from_secs(5);
/// Requeue when blocked by something a human must change.
const REQUEUE_BLOCKED: Duration = Duration::from_secs(15);
/// Requeue when converged (to refresh member health).
const REQUEUE_IDLE: Duration = Duration::from_secs(30);
/// Requeue while the client TLS Secret is missing or unusable: only a safety net, since the
/// Secret watch reconciles the cluster as soon as the Secret appears or changes.
const REQUEUE_SECRET: Duration = Duration::from_secs(300);

/// Maps `(names, ordinal)` to the client URL the operator dials.
pub type EndpointFn = Arc<dyn Fn(&Names, u32) -> String + Send + Sync>;

/// What reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The PodDisruptionBudget API served by the cluster (`None`: skipped, with a warning).
    pub pdb: Option<ApiResource>,
    /// etcd-side calls to plain-text members (TLS clusters get a client with their Secret's
    /// material at each reconcile).
    pub members: MemberClient,
    /// Where member `k` is dialled: `http(s)://<pod>.<headless>.<ns>.svc.<domain>:2379` by
    /// default.
    pub endpoint: EndpointFn,
}

impl Context {
    /// A context with the default member endpoints (pod DNS names).
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        pdb: Option<ApiResource>,
        instance: Option<String>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Context {
            client,
            recorder,
            metrics,
            pdb,
            members: MemberClient::plain(),
            endpoint: Arc::new(|names: &Names, k: u32| names.client_url(k)),
        }
    }
}

/// The member TLS material of the client TLS Secret `name`: `ca.crt`, `tls.crt` and `tls.key`
/// (all three: the members serve with the last two). `Err` says what is wrong with it.
fn member_tls(name: &str, secret: &Secret) -> std::result::Result<MemberTls, String> {
    let key = |k: &str| -> std::result::Result<Vec<u8>, String> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("client TLS Secret {name} has no {k}"))
    };
    let (ca, cert, tls_key) = (key("ca.crt")?, key("tls.crt")?, key("tls.key")?);
    MemberTls::new(ca, Some((cert, tls_key))).map_err(|e| format!("client TLS Secret {name}: {e}"))
}

/// The first member (name, URL) whose first URL in `urls_of` is not `https` when `tls`, or not
/// `http` otherwise; members with no URL there (not started yet) are skipped.
fn first_other_scheme<'a>(
    tls: bool,
    members: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>,
) -> Option<(&'a String, &'a String)> {
    let want = if tls { "https://" } else { "http://" };
    members.into_iter().find_map(|(name, urls)| {
        let url = urls.first()?;
        (!url.starts_with(want)).then_some((name, url))
    })
}

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// A member whose peer URL scheme is not the one the spec asks for (`https` with
/// `spec.tls.peerSecretName`): members cannot switch peer TLS in place, since their peers keep
/// dialling the URLs in the member list.
fn peer_scheme_conflict<'a>(
    names: &Names,
    members: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>,
) -> Option<String> {
    let (name, url) = first_other_scheme(names.peer_tls, members)?;
    Some(format!(
        "member {name} has peer URL {url}, but the spec asks for {} peer URLs \
         (spec.tls.peerSecretName): peer TLS cannot be switched on a running cluster; \
         restore the previous setting",
        scheme(names.peer_tls)
    ))
}

/// A member still publishing client URLs of the other scheme than the spec's (`https` with
/// `spec.tls.clientSecretName`): client TLS was switched, and the StatefulSet's rolling update
/// has not restarted that member with the new flags yet (a member publishes its client URLs
/// through raft when it starts; its peer URL and data stay).
fn client_scheme_rollout<'a>(
    names: &Names,
    members: impl IntoIterator<Item = (&'a String, &'a Vec<String>)>,
) -> Option<String> {
    let (name, url) = first_other_scheme(names.client_tls, members)?;
    Some(format!(
        "member {name} still serves clients at {url}; the StatefulSet restarts members one at \
         a time with {} client URLs (spec.tls.clientSecretName)",
        scheme(names.client_tls)
    ))
}

/// The step to report while a client TLS switch rolls out (`rollout`, from
/// [`client_scheme_rollout`]): membership as specified (`Converged`), or only waiting for members
/// the operator cannot reach yet (the ones still on the old scheme), is `ClientTlsRollout`.
/// Membership steps and other waits are left as planned: the roll-out does not hold a repair
/// or a scale step (a member the StatefulSet cannot roll, because it never gets Ready, would
/// otherwise block its own repair).
fn rolling_out(step: Step, rollout: Option<String>) -> Step {
    match (step, rollout) {
        (Step::Converged, Some(message))
        | (
            Step::Wait {
                reason: "MembersUnhealthy",
                ..
            },
            Some(message),
        ) => Step::Wait {
            reason: "ClientTlsRollout",
            message,
        },
        (step, _) => step,
    }
}

/// Reason of the Degraded condition while the client TLS Secret is missing or unusable.
const SECRET_INVALID: &str = "ClientTlsSecretInvalid";

/// The clusters among `clusters` that name `secret` in `spec.tls` (client or peer Secret, same
/// namespace): what a change of that Secret must reconcile.
pub fn clusters_naming_secret<'a>(
    secret: &Secret,
    clusters: impl IntoIterator<Item = &'a EtcdCluster>,
) -> Vec<ObjectRef<EtcdCluster>> {
    let (Some(name), Some(ns)) = (secret.metadata.name.as_deref(), secret.namespace()) else {
        return vec![];
    };
    clusters
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
        .filter(|c| {
            c.spec.tls.as_ref().is_some_and(|t| {
                t.client_secret_name.as_deref() == Some(name)
                    || t.peer_secret_name.as_deref() == Some(name)
            })
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// Picks the PodDisruptionBudget API from discovery: `policy/v1`, else `policy/v1beta1`, else
/// none.
pub async fn discover_pdb(client: &Client) -> Option<ApiResource> {
    for version in ["policy/v1", "policy/v1beta1"] {
        if let Ok(list) = client.list_api_group_resources(version).await
            && list
                .resources
                .iter()
                .any(|r| r.name == "poddisruptionbudgets")
        {
            let v = version.split_once('/').map_or(version, |(_, v)| v);
            return Some(ApiResource {
                group: "policy".into(),
                version: v.into(),
                api_version: version.into(),
                kind: "PodDisruptionBudget".into(),
                plural: "poddisruptionbudgets".into(),
            });
        }
    }
    None
}

/// What one observation found, besides the planner's input.
#[derive(Debug, Default)]
struct Seen {
    sts: Option<StatefulSet>,
    members: Option<Vec<Observed>>,
    /// Ordinal of the member to send membership calls to (the leader if healthy).
    leader_ordinal: Option<u32>,
    cluster_id: Option<u64>,
}

/// One member with its health.
#[derive(Debug, Clone)]
struct Observed {
    member: members::Member,
    ordinal: Option<u32>,
    health: Option<MemberHealth>,
    leader: bool,
}

impl Observed {
    fn healthy(&self) -> bool {
        self.health
            .as_ref()
            .is_some_and(|h| h.id == self.member.id && h.leader != 0)
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn now_rfc3339() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map_or_else(|_| Timestamp::now().to_string(), |t| t.to_string())
}

impl EtcdCluster {
    fn names(&self) -> Names {
        Names::of(self)
    }

    /// Reconciles a live (not deleting) cluster: one planner step at most.
    pub async fn reconcile(&self, ctx: &Context) -> Result<Action> {
        let names = self.names();
        let ns = names.namespace.clone();
        let client = ctx.client.clone();
        let status = self.status.clone().unwrap_or_default();

        // Children that carry no membership meaning are applied every time.
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        for svc in [
            children::headless_service(self),
            children::client_service(self),
        ] {
            services
                .patch(&svc.name_any(), &ssa(), &Patch::Apply(&svc))
                .await?;
        }

        // Members with client TLS are dialled with the Secret's material.
        let (mc, tls_problem) = match self.member_client(ctx).await? {
            Ok(mc) => (mc, None),
            Err(problem) => (ctx.members.clone(), Some(problem)),
        };
        let seen = self.observe(ctx, &mc, &status).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod_list = pods
            .list(&ListParams::default().labels(&children::selector_string(self)))
            .await?;
        let observed_pods = self.observed_pods(&pod_list.items);
        let (pvc_terminating, pvc_ordinals): (Vec<_>, Vec<_>) = if self.spec.storage.empty_dir {
            (vec![], vec![])
        } else {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            pvcs.list(&ListParams::default().labels(&children::selector_string(self)))
                .await?
                .items
                .iter()
                .filter_map(|p| {
                    let k = names.pvc_ordinal(&p.name_any())?;
                    Some((p.metadata.deletion_timestamp.is_some(), k))
                })
                .partition(|(deleting, _)| *deleting)
        };
        let pvc_ordinals: Vec<u32> = pvc_ordinals.into_iter().map(|(_, k)| k).collect();
        let pvc_terminating: Vec<u32> = pvc_terminating.into_iter().map(|(_, k)| k).collect();

        let obs = Observation {
            desired: self.spec.replicas,
            members: seen.members.as_ref().map(|ms| {
                ms.iter()
                    .map(|m| ObservedMember {
                        id: m.member.id,
                        name: m.member.name.clone(),
                        ordinal: m.ordinal,
                        learner: m.member.learner,
                        healthy: m.healthy(),
                        leader: m.leader,
                    })
                    .collect()
            }),
            statefulset_replicas: seen
                .sts
                .as_ref()
                .and_then(|s| s.spec.as_ref()?.replicas)
                .map(|r| r.max(0) as u32),
            pods: observed_pods,
            pvc_ordinals,
            pvc_terminating,
            uses_pvcs: !self.spec.storage.empty_dir,
            delete_pvcs_when_scaled: self.spec.pvc_retention_policy.when_scaled
                == PvcPolicy::Delete,
            bootstrapped: status.cluster_id.is_some() || seen.cluster_id.is_some(),
            known_members: status.members.len() as u32,
            pending: status.pending_operation.clone(),
        };

        // Turning peer TLS on or off under running members would restart them on listeners
        // their peers no longer reach: nothing is rolled out, the cluster is blocked.
        let peer_conflict = seen.members.as_ref().and_then(|ms| {
            peer_scheme_conflict(
                &names,
                ms.iter().map(|m| (&m.member.name, &m.member.peer_urls)),
            )
        });

        // The ConfigMap follows membership whenever members answer (etcd reads it only when
        // its data dir is empty, i.e. when a member joins).
        // A learner being added (recorded, perhaps refused by etcd for now) stays listed, or
        // this write and the step's own would flip the ConfigMap back and forth.
        if let Some(ms) = seen.members.as_ref().filter(|_| peer_conflict.is_none()) {
            let mut ordinals: BTreeSet<u32> = ms.iter().filter_map(|m| m.ordinal).collect();
            if let Some(op) = &status.pending_operation
                && op.action == crate::crd::Action::AddLearner
                && let Some(k) = op.ordinal.and_then(|k| u32::try_from(k).ok())
                && k < self.spec.replicas.max(0) as u32
            {
                ordinals.insert(k);
            }
            self.apply_configmap(ctx, &ordinals.into_iter().collect::<Vec<_>>(), false)
                .await?;
        }
        // The budget keeps a quorum of the current voters (the last known ones when none answer).
        let voters = seen
            .members
            .as_ref()
            .map_or(status.voting_members.max(0) as u32, |ms| {
                ms.iter().filter(|m| !m.member.learner).count() as u32
            });
        self.apply_pdb(ctx, voters.max(1)).await?;
        if let Some(sts) = &seen.sts
            && let Some(r) = sts.spec.as_ref().and_then(|s| s.replicas)
            && peer_conflict.is_none()
            && tls_problem.is_none()
        {
            // Template changes (image, resources, flags) roll out; replicas stay as they are.
            // Not while the client TLS Secret is unusable: pods would restart without it.
            self.apply_statefulset(ctx, r.max(0) as u32).await?;
        }

        let step = match (tls_problem, peer_conflict) {
            (Some(message), _) => Step::Blocked {
                reason: SECRET_INVALID,
                message,
            },
            (None, Some(message)) => Step::Blocked {
                reason: "PeerTlsChangeUnsupported",
                message,
            },
            (None, None) => rolling_out(
                planner::plan(&obs),
                seen.members.as_ref().and_then(|ms| {
                    client_scheme_rollout(
                        &names,
                        ms.iter().map(|m| (&m.member.name, &m.member.client_urls)),
                    )
                }),
            ),
        };
        tracing::info!(cluster = %names.cluster, namespace = %ns, ?step, "planned");

        let new_status = self.status_for(&status, &seen, &step, ctx.pdb.is_some());
        if new_status != status {
            self.patch_status(ctx, &new_status).await?;
        }
        self.note_blocked(ctx, &status, &step).await;

        if step.action().is_none() {
            return Ok(Action::requeue(match step {
                Step::Converged => REQUEUE_IDLE,
                Step::Blocked {
                    reason: SECRET_INVALID,
                    ..
                } => REQUEUE_SECRET,
                Step::Blocked { .. } => REQUEUE_BLOCKED,
                _ => REQUEUE_WAIT,
            }));
        }
        self.perform(ctx, &mc, &step, &seen, &obs).await
    }

    /// The member client for this cluster: plain, or with the client TLS Secret's CA and
    /// certificate. `Ok(Err(why))` when the Secret is missing or unusable.
    async fn member_client(
        &self,
        ctx: &Context,
    ) -> Result<std::result::Result<MemberClient, String>> {
        let Some(secret) = self
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.client_secret_name.as_deref())
        else {
            return Ok(Ok(ctx.members.clone()));
        };
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &self.names().namespace);
        let Some(found) = api.get_opt(secret).await? else {
            return Ok(Err(format!(
                "client TLS Secret {secret} (spec.tls.clientSecretName) does not exist"
            )));
        };
        Ok(member_tls(secret, &found).map(MemberClient::with_tls))
    }

    /// Carries out one recorded step.
    async fn perform(
        &self,
        ctx: &Context,
        mc: &MemberClient,
        step: &Step,
        seen: &Seen,
        obs: &Observation,
    ) -> Result<Action> {
        let names = self.names();
        let ns = names.namespace.clone();
        let target = |exclude: Option<u32>| -> Option<String> {
            let ms = seen.members.as_ref()?;
            let pick = seen
                .leader_ordinal
                .filter(|&k| Some(k) != exclude)
                .or_else(|| {
                    ms.iter()
                        .filter(|m| m.healthy() && !m.member.learner && m.ordinal != exclude)
                        .find_map(|m| m.ordinal)
                })?;
            Some((ctx.endpoint)(&names, pick))
        };
        let action = step.action().map(|a| format!("{a:?}")).unwrap_or_default();
        let (reason, note) = match step {
            Step::Bootstrap => {
                self.apply_configmap(ctx, &[0], true).await?;
                self.apply_statefulset(ctx, 1).await?;
                (
                    "Bootstrapping",
                    format!("bootstrapping member {}", names.pod(0)),
                )
            }
            Step::SetReplicas { replicas } => {
                if obs.members.is_none() && seen.sts.is_none() {
                    // Recreating a deleted StatefulSet: members rejoin with their data.
                    let ordinals: Vec<u32> = (0..*replicas).collect();
                    self.apply_configmap(ctx, &ordinals, false).await?;
                }
                self.apply_statefulset(ctx, *replicas).await?;
                ("Scaled", format!("StatefulSet replicas set to {replicas}"))
            }
            Step::AddLearner { ordinal } => {
                let mut ordinals: BTreeSet<u32> = seen
                    .members
                    .iter()
                    .flatten()
                    .filter_map(|m| m.ordinal)
                    .collect();
                ordinals.insert(*ordinal);
                self.apply_configmap(ctx, &ordinals.into_iter().collect::<Vec<_>>(), false)
                    .await?;
                let ep = target(None).ok_or(members::MemberError::NoneReachable)?;
                let url = names.peer_url(*ordinal);
                let id = match mc.add_learner(&ep, &url).await {
                    Ok(id) => id,
                    Err(e) if members::is_unhealthy_cluster(&e) => {
                        tracing::info!(cluster = %names.cluster, "etcd refuses changes for now: {e}");
                        return Ok(Action::requeue(REQUEUE_WAIT));
                    }
                    Err(e) => return Err(e.into()),
                };
                (
                    "MemberAdded",
                    format!("added learner {id:x} for {} ({url})", names.pod(*ordinal)),
                )
            }
            Step::Promote { id, ordinal } => {
                let ep = target(None).ok_or(members::MemberError::NoneReachable)?;
                match mc.promote(&ep, *id).await {
                    Ok(()) => {}
                    Err(e) if members::is_not_ready_to_promote(&e) => {
                        tracing::info!(member = %names.pod(*ordinal), "learner not caught up yet");
                        return Ok(Action::requeue(REQUEST_CATCH_UP));
                    }
                    Err(e) if members::is_not_learner(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                (
                    "MemberPromoted",
                    format!("promoted {} ({id:x}) to voting member", names.pod(*ordinal)),
                )
            }
            Step::MoveLeader { from, to } => {
                let from_ord = seen
                    .members
                    .iter()
                    .flatten()
                    .find(|m| m.member.id == *from)
                    .and_then(|m| m.ordinal)
                    .ok_or(members::MemberError::NoneReachable)?;
                let ep = (ctx.endpoint)(&names, from_ord);
                mc.move_leader(&ep, *to).await?;
                (
                    "LeaderMoved",
                    format!("moved leadership from {from:x} to {to:x}"),
                )
            }
            Step::Remove {
                id,
                ordinal,
                repair,
            } => {
                let ep = target(Some(*ordinal)).ok_or(members::MemberError::NoneReachable)?;
                match mc.remove(&ep, *id).await {
                    Ok(()) => {}
                    Err(e) if members::is_member_not_found(&e) => {}
                    Err(e) if members::is_unhealthy_cluster(&e) => {
                        tracing::info!(cluster = %names.cluster, "etcd refuses changes for now: {e}");
                        return Ok(Action::requeue(REQUEUE_WAIT));
                    }
                    Err(e) => return Err(e.into()),
                }
                if *repair {
                    (
                        "MemberRemovedForRepair",
                        format!(
                            "removed failing member {} ({id:x}); it will be wiped and added again",
                            names.pod(*ordinal)
                        ),
                    )
                } else {
                    (
                        "MemberRemoved",
                        format!("removed member {} ({id:x})", names.pod(*ordinal)),
                    )
                }
            }
            Step::Wipe { ordinal, pod_uid } => {
                if !self.spec.storage.empty_dir {
                    self.delete_pvc(ctx, *ordinal).await?;
                }
                if let Some(uid) = pod_uid {
                    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match pods.delete(&names.pod(*ordinal), &dp).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                (
                    "MemberWiped",
                    format!("deleted the pod and data of {}", names.pod(*ordinal)),
                )
            }
            Step::DeletePvc { ordinal } => {
                self.delete_pvc(ctx, *ordinal).await?;
                (
                    "ClaimDeleted",
                    format!("deleted claim {} of a removed member", names.pvc(*ordinal)),
                )
            }
            Step::Wait { .. } | Step::Blocked { .. } | Step::Converged => unreachable!(),
        };
        ctx.metrics
            .changes
            .get_or_create(&ActionLabels {
                action: action.clone(),
            })
            .inc();
        tracing::info!(cluster = %names.cluster, namespace = %ns, reason, "{note}");
        self.event(ctx, EventType::Normal, reason, &action, &note)
            .await;
        Ok(Action::requeue(REQUEUE_BUSY))
    }

    /// Deletion: claims go when the policy says so; everything else by garbage collection.
    pub async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        let names = self.names();
        if self.spec.pvc_retention_policy.when_deleted == PvcPolicy::Delete {
            let pvcs: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &names.namespace);
            let list = pvcs
                .list(&ListParams::default().labels(&children::selector_string(self)))
                .await?;
            for p in list.items {
                if let Some(k) = names.pvc_ordinal(&p.name_any()) {
                    self.delete_pvc(ctx, k).await?;
                }
            }
        }
        self.event(
            ctx,
            EventType::Normal,
            "Deleted",
            "Cleanup",
            "cluster deleted; children go by garbage collection",
        )
        .await;
        Ok(Action::await_change())
    }

    async fn delete_pvc(&self, ctx: &Context, k: u32) -> Result<()> {
        let names = self.names();
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &names.namespace);
        match pvcs.delete(&names.pvc(k), &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the StatefulSet, then the member list and every member's status.
    async fn observe(
        &self,
        ctx: &Context,
        mc: &MemberClient,
        status: &EtcdClusterStatus,
    ) -> Result<Seen> {
        let names = self.names();
        let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
        let sts = sts_api.get_opt(names.statefulset()).await?;
        let sts_replicas = sts
            .as_ref()
            .and_then(|s| s.spec.as_ref()?.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        // Ask every ordinal that may run a member: the StatefulSet's and the last known ones.
        let mut ordinals: BTreeSet<u32> = (0..sts_replicas).collect();
        ordinals.extend(
            status
                .members
                .iter()
                .filter_map(|m| names.peer_url_ordinal(&m.peer_url)),
        );
        let endpoints: Vec<String> = ordinals
            .iter()
            .map(|&k| (ctx.endpoint)(&names, k))
            .collect();
        let mut seen = Seen {
            sts,
            ..Default::default()
        };
        if endpoints.is_empty() {
            return Ok(seen);
        }
        let list = match mc.list(&endpoints).await {
            Ok((_, list)) => list,
            Err(e) => {
                tracing::info!(cluster = %names.cluster, error = %e, "member list unavailable");
                return Ok(seen);
            }
        };
        let healths = futures::future::join_all(list.iter().map(|m| {
            let ordinal = m.peer_urls.first().and_then(|u| names.peer_url_ordinal(u));
            let ep = ordinal.map(|k| (ctx.endpoint)(&names, k));
            async move {
                match ep {
                    Some(ep) => mc.status(&ep).await.ok(),
                    None => None,
                }
            }
        }))
        .await;
        // The leader as the healthy members report it.
        let leader_id = healths.iter().flatten().map(|h| h.leader).find(|&l| l != 0);
        let observed: Vec<Observed> = list
            .into_iter()
            .zip(healths)
            .map(|(m, health)| Observed {
                ordinal: m.peer_urls.first().and_then(|u| names.peer_url_ordinal(u)),
                leader: Some(m.id) == leader_id,
                member: m,
                health,
            })
            .collect();
        seen.cluster_id = observed
            .iter()
            .filter_map(|m| m.health.as_ref())
            .map(|h| h.cluster_id)
            .find(|&c| c != 0);
        seen.leader_ordinal = observed
            .iter()
            .find(|m| m.leader && m.healthy())
            .and_then(|m| m.ordinal);
        seen.members = Some(observed);
        Ok(seen)
    }

    fn observed_pods(&self, pods: &[Pod]) -> Vec<ObservedPod> {
        let names = self.names();
        let now = Timestamp::now();
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let ordinal = names.pod_ordinal(&p.name_any())?;
                let ready_cond = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
                let ready = ready_cond.is_some_and(|c| c.status == "True");
                let since = ready_cond
                    .and_then(|c| c.last_transition_time.as_ref())
                    .or(p.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0);
                let failing = !ready
                    && since.is_some_and(|t| {
                        now.duration_since(t).as_secs() >= self.spec.repair_after_seconds
                    });
                Some(ObservedPod {
                    ordinal,
                    uid: p.uid().unwrap_or_default(),
                    ready,
                    failing,
                })
            })
            .collect()
    }

    async fn apply_configmap(&self, ctx: &Context, ordinals: &[u32], new: bool) -> Result<()> {
        let cm = children::members_configmap(self, ordinals, new);
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &self.names().namespace);
        api.patch(&cm.name_any(), &ssa(), &Patch::Apply(&cm))
            .await?;
        Ok(())
    }

    async fn apply_statefulset(&self, ctx: &Context, replicas: u32) -> Result<()> {
        let sts = children::statefulset(self, replicas);
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &self.names().namespace);
        api.patch(&sts.name_any(), &ssa(), &Patch::Apply(&sts))
            .await?;
        Ok(())
    }

    async fn apply_pdb(&self, ctx: &Context, voters: u32) -> Result<()> {
        let Some(ar) = &ctx.pdb else {
            return Ok(());
        };
        let names = self.names();
        let body = children::pdb(self, &ar.api_version, voters);
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &names.namespace, ar);
        api.patch(names.pdb(), &ssa(), &Patch::Apply(&body)).await?;
        Ok(())
    }

    /// The status after this observation and plan. `lastTransitionTime` of a condition is kept
    /// while its status does not change.
    fn status_for(
        &self,
        old: &EtcdClusterStatus,
        seen: &Seen,
        step: &Step,
        pdb_served: bool,
    ) -> EtcdClusterStatus {
        let names = self.names();
        let generation = self.metadata.generation;
        let mut st = old.clone();
        st.observed_generation = generation;
        if let Some(ms) = &seen.members {
            st.members = ms
                .iter()
                .map(|m| MemberStatus {
                    id: format!("{:x}", m.member.id),
                    name: m.member.name.clone(),
                    peer_url: m.member.peer_urls.first().cloned().unwrap_or_default(),
                    learner: m.member.learner,
                    healthy: m.healthy(),
                    leader: m.leader,
                })
                .collect();
            st.leader = ms.iter().find(|m| m.leader).map(|m| {
                if m.member.name.is_empty() {
                    m.ordinal.map(|k| names.pod(k)).unwrap_or_default()
                } else {
                    m.member.name.clone()
                }
            });
        } else {
            for m in &mut st.members {
                m.healthy = false;
                m.leader = false;
            }
            st.leader = None;
        }
        if let Some(c) = seen.cluster_id {
            st.cluster_id = Some(format!("{c:x}"));
        }
        st.ready_members = st.members.iter().filter(|m| m.healthy).count() as i32;
        st.voting_members = st.members.iter().filter(|m| !m.learner).count() as i32;
        st.replicas = seen
            .sts
            .as_ref()
            .and_then(|s| s.spec.as_ref()?.replicas)
            .unwrap_or(0);
        let started = now_rfc3339();
        match step {
            Step::Converged => st.pending_operation = None,
            s if s.action().is_some() => {
                // The same step again (etcd refused it for now): keep its record as it is, so
                // the status does not change and does not trigger another reconcile at once.
                let mut op = s.operation(&started);
                if let (Some(new), Some(prev)) = (op.as_mut(), old.pending_operation.as_ref()) {
                    let mut same = new.clone();
                    same.started_at = prev.started_at.clone();
                    if &same == prev {
                        *new = same;
                    }
                }
                st.pending_operation = op;
            }
            _ => {}
        }

        let healthy_voters = st
            .members
            .iter()
            .filter(|m| !m.learner && m.healthy)
            .count();
        let quorum_ok = seen.members.is_some()
            && st.voting_members > 0
            && healthy_voters >= planner::quorum(st.voting_members as usize);
        let mut conds: Vec<Condition> = vec![];
        let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
            let status = if ok { "True" } else { "False" };
            let prev = old.conditions.iter().find(|c| c.type_ == type_);
            let last = match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => started.clone(),
            };
            conds.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                last_transition_time: last,
                observed_generation: generation,
            });
        };
        if quorum_ok {
            set(
                "Available",
                true,
                "QuorumHealthy",
                format!(
                    "{healthy_voters} of {} voting members healthy",
                    st.voting_members
                ),
            );
        } else if seen.members.is_none() && st.cluster_id.is_none() {
            set(
                "Available",
                false,
                "Bootstrapping",
                "no member answers yet".into(),
            );
        } else {
            set(
                "Available",
                false,
                "NoQuorum",
                format!(
                    "{healthy_voters} of {} voting members healthy",
                    st.voting_members
                ),
            );
        }
        match step {
            Step::Converged => set(
                "Progressing",
                false,
                "Converged",
                format!("{} members as specified", self.spec.replicas),
            ),
            Step::Wait { reason, message } => set("Progressing", true, reason, message.clone()),
            Step::Blocked { reason, message } => set("Progressing", false, reason, message.clone()),
            s => {
                let a = s.action().map(|a| format!("{a:?}")).unwrap_or_default();
                set("Progressing", true, &a, describe(s, &names))
            }
        }
        let unhealthy: Vec<String> = st
            .members
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| {
                if m.name.is_empty() {
                    m.id.clone()
                } else {
                    m.name.clone()
                }
            })
            .collect();
        match step {
            Step::Blocked { reason, message } => set("Degraded", true, reason, message.clone()),
            _ if !unhealthy.is_empty() && st.pending_operation.is_none() => set(
                "Degraded",
                true,
                "MembersUnhealthy",
                format!("unhealthy: {}", unhealthy.join(", ")),
            ),
            _ => set(
                "Degraded",
                false,
                "AsExpected",
                "every member is healthy".into(),
            ),
        }
        if !pdb_served {
            set(
                "DisruptionBudget",
                false,
                "PolicyApiUnavailable",
                "the API server serves neither policy/v1 nor policy/v1beta1; no PodDisruptionBudget"
                    .into(),
            );
        }
        st.conditions = conds;
        st
    }

    async fn patch_status(&self, ctx: &Context, status: &EtcdClusterStatus) -> Result<()> {
        let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &self.names().namespace);
        // A merge patch: `pendingOperation: null` clears a finished step.
        let mut body = serde_json::to_value(status).map_err(Error::Json)?;
        if status.pending_operation.is_none() {
            body["pendingOperation"] = serde_json::Value::Null;
        }
        if status.leader.is_none() {
            body["leader"] = serde_json::Value::Null;
        }
        api.patch_status(
            &self.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": body })),
        )
        .await?;
        Ok(())
    }

    /// A Warning Event when the cluster becomes blocked (or the reason changes).
    async fn note_blocked(&self, ctx: &Context, old: &EtcdClusterStatus, step: &Step) {
        let Step::Blocked { reason, message } = step else {
            return;
        };
        let was = old
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == *reason);
        if !was {
            self.event(ctx, EventType::Warning, reason, "Plan", message)
                .await;
        }
    }

    async fn event(&self, ctx: &Context, type_: EventType, reason: &str, action: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &self.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing event");
        }
    }
}

/// Requeue while a learner catches up.
const REQUEST_CATCH_UP: Duration = Duration::from_secs(3);

fn describe(step: &Step, names: &Names) -> String {
    match step {
        Step::Bootstrap => format!("bootstrapping {}", names.pod(0)),
        Step::AddLearner { ordinal } => format!("adding {} as a learner", names.pod(*ordinal)),
        Step::SetReplicas { replicas } => format!("setting StatefulSet replicas to {replicas}"),
        Step::Promote { ordinal, .. } => format!("promoting {}", names.pod(*ordinal)),
        Step::MoveLeader { from, to } => format!("moving leadership from {from:x} to {to:x}"),
        Step::Remove { ordinal, .. } => format!("removing {}", names.pod(*ordinal)),
        Step::Wipe { ordinal, .. } => format!("wiping {}", names.pod(*ordinal)),
        Step::DeletePvc { ordinal } => format!("deleting claim {}", names.pvc(*ordinal)),
        Step::Wait { message, .. } | Step::Blocked { message, .. } => message.clone(),
        Step::Converged => "converged".into(),
    }
}

/// The entry point of each reconciliation: finalizer, timing, metrics.
pub async fn reconcile(cluster: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciliations.inc();
    let ns = cluster.namespace().unwrap_or_default();
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let res = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalizer::Apply(c) => c.reconcile(&ctx).await,
            Finalizer::Cleanup(c) => c.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Requeue after a failed reconciliation; counts the error.
pub fn error_policy(cluster: Arc<EtcdCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            kind: error.kind().into(),
        })
        .inc();
    tracing::warn!(cluster = %cluster.name_any(), error = %error, "reconcile failed");
    Action::requeue(match error.kind() {
        "member" => REQUEUE_WAIT,
        _ => Duration::from_secs(10),
    })
}

/// Runs the controller until `shutdown` resolves. `namespace` limits it to one namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=concord-operator");
    let controller = Controller::new(
        api::<EtcdCluster>(&client, &namespace),
        watcher::Config::default(),
    );
    // A TLS Secret that appears or changes reconciles the clusters naming it at once.
    let clusters = controller.store();
    let mut controller = controller
        .watches(
            api::<Secret>(&client, &namespace),
            watcher::Config::default(),
            move |secret: Secret| {
                clusters_naming_secret(&secret, clusters.state().iter().map(|c| c.as_ref()))
            },
        )
        .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
        .watches(
            api::<Pod>(&client, &namespace),
            owned.clone(),
            |pod: Pod| {
                let name = pod.labels().get("app.kubernetes.io/instance")?.clone();
                Some(ObjectRef::<EtcdCluster>::new(&name).within(&pod.namespace()?))
            },
        );
    if let Some(ar) = ctx.pdb.clone() {
        let pdbs: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_with(pdbs, ar, owned.clone());
    } else {
        tracing::warn!(
            "the API server serves no PodDisruptionBudget API (policy/v1 or policy/v1beta1); \
             clusters get none"
        );
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Reconcile branches against a mock API server (tower-test): the exact requests, in order, and
/// the bodies that matter. Members are dialled at a closed loopback port, so they never answer.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{EtcdClusterSpec, MemberStatus};
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn context() -> (Context, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let pdb = ApiResource {
            group: "policy".into(),
            version: "v1beta1".into(),
            api_version: "policy/v1beta1".into(),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        };
        let mut ctx = Context::new(client, Arc::new(Metrics::default()), Some(pdb), None);
        ctx.endpoint = Arc::new(|_: &Names, _: u32| "http://127.0.0.1:1".to_owned());
        (ctx, handle)
    }

    fn cluster(spec: &str, status: Option<EtcdClusterStatus>) -> EtcdCluster {
        let mut c = EtcdCluster::new("c", serde_json::from_str::<EtcdClusterSpec>(spec).unwrap());
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("0000-1111".into());
        c.metadata.generation = Some(4);
        c.metadata.finalizers = Some(vec![FINALIZER.into()]);
        c.status = status;
        c
    }

    /// Answers the next request, which must be `method` on `path` (query ignored); returns the
    /// full URI and the JSON body.
    async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
        code: u16,
        reply: Value,
    ) -> (String, Value) {
        let (req, send) = handle.next_request().await.expect("a request");
        let uri = req.uri().to_string();
        assert_eq!(req.method().as_str(), method, "{uri}");
        assert_eq!(req.uri().path(), path, "{method} {uri}");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let reply = if reply == Value::Null {
            body.clone()
        } else {
            reply
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        (uri, body)
    }

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }
    fn empty_list(kind: &str) -> Value {
        json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": []})
    }

    async fn expect_services(handle: &mut Handle) {
        for name in ["c", "c-client"] {
            let (uri, body) = expect(
                handle,
                "PATCH",
                &format!("/api/v1/namespaces/ns/services/{name}"),
                200,
                Value::Null,
            )
            .await;
            assert!(uri.contains("fieldManager=concord-operator"), "{uri}");
            assert!(uri.contains("force=true"), "{uri}");
            assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "c");
        }
    }

    /// The observation of a cluster with no pods and no member answering: the Services, the
    /// client TLS Secret (`secret`: its name, answered 404), the StatefulSet (`sts`, else 404),
    /// the pods, the claims (`claims`), then the budget's apply, whose body is returned.
    async fn expect_nothing_running(
        handle: &mut Handle,
        secret: Option<&str>,
        sts: Option<Value>,
        claims: bool,
    ) -> Value {
        expect_services(handle).await;
        let mut gets = vec![];
        if let Some(s) = secret {
            gets.push((
                format!("/api/v1/namespaces/ns/secrets/{s}"),
                404,
                not_found(),
            ));
        }
        gets.push(match sts {
            Some(sts) => (STATEFULSET.into(), 200, sts),
            None => (STATEFULSET.into(), 404, not_found()),
        });
        gets.push((
            "/api/v1/namespaces/ns/pods".into(),
            200,
            empty_list("PodList"),
        ));
        if claims {
            gets.push((
                "/api/v1/namespaces/ns/persistentvolumeclaims".into(),
                200,
                empty_list("PersistentVolumeClaimList"),
            ));
        }
        for (path, code, reply) in gets {
            expect(handle, "GET", &path, code, reply).await;
        }
        let (_, pdb) = expect(
            handle,
            "PATCH",
            "/apis/policy/v1beta1/namespaces/ns/poddisruptionbudgets/c",
            200,
            Value::Null,
        )
        .await;
        pdb
    }

    /// The status merge patch: its `status`.
    async fn expect_status(handle: &mut Handle) -> Value {
        let reply = json!({"apiVersion": "concord.dev/v1alpha1", "kind": "EtcdCluster", "metadata": {"name": "c"}, "spec": {}});
        let path = "/apis/concord.dev/v1alpha1/namespaces/ns/etcdclusters/c/status";
        let (_, body) = expect(handle, "PATCH", path, 200, reply).await;
        body["status"].clone()
    }

    /// The condition of type `t` in `status`.
    fn cond(status: &Value, t: &str) -> Value {
        let conds = status["conditions"].as_array().unwrap();
        conds.iter().find(|c| c["type"] == t).unwrap().clone()
    }

    /// A server-side apply of `path`: its body.
    async fn expect_apply(handle: &mut Handle, path: &str) -> Value {
        expect(handle, "PATCH", path, 200, Value::Null).await.1
    }

    /// An Event: its body.
    async fn expect_event(handle: &mut Handle) -> Value {
        let path = "/apis/events.k8s.io/v1/namespaces/ns/events";
        expect(handle, "POST", path, 201, Value::Null).await.1
    }

    const CONFIGMAP: &str = "/api/v1/namespaces/ns/configmaps/c-members";
    const STATEFULSET: &str = "/apis/apps/v1/namespaces/ns/statefulsets/c";

    #[tokio::test]
    async fn new_cluster_records_then_bootstraps() {
        let (ctx, mut handle) = context();
        let c = cluster("{}", None);
        let api = tokio::spawn(async move {
            let pdb = expect_nothing_running(&mut handle, None, None, true).await;
            assert_eq!(pdb["apiVersion"], "policy/v1beta1");
            assert_eq!(pdb["spec"]["minAvailable"], 1);
            // The intent is in status before anything is created.
            let st = expect_status(&mut handle).await;
            assert_eq!(st["pendingOperation"]["action"], "Bootstrap");
            assert_eq!(st["observedGeneration"], 4);
            assert_eq!(cond(&st, "Progressing")["reason"], "Bootstrap");
            assert_eq!(cond(&st, "Available")["reason"], "Bootstrapping");
            let cm = expect_apply(&mut handle, CONFIGMAP).await;
            assert_eq!(cm["data"]["ETCD_INITIAL_CLUSTER_STATE"], "new");
            assert_eq!(
                cm["data"]["ETCD_INITIAL_CLUSTER"],
                "c-0=http://c-0.c.ns.svc.cluster.local:2380"
            );
            let sts = expect_apply(&mut handle, STATEFULSET).await;
            assert_eq!(sts["spec"]["replicas"], 1);
            let ev = expect_event(&mut handle).await;
            assert_eq!(ev["reason"], "Bootstrapping");
            assert_eq!(ev["type"], "Normal");
        });
        let action = c.reconcile(&ctx).await.unwrap();
        assert_eq!(action, Action::requeue(REQUEUE_BUSY));
        api.await.unwrap();
    }

    #[tokio::test]
    async fn deleted_statefulset_is_recreated_at_membership_size() {
        let (ctx, mut handle) = context();
        let members = (0..3)
            .map(|k| MemberStatus {
                id: format!("{:x}", 0x100 + k),
                name: format!("c-{k}"),
                peer_url: format!("http://c-{k}.c.ns.svc:2380"),
                learner: false,
                healthy: true,
                leader: k == 0,
            })
            .collect();
        let status = EtcdClusterStatus {
            cluster_id: Some("abc".into()),
            members,
            voting_members: 3,
            ..Default::default()
        };
        let c = cluster(
            r#"{"replicas": 3, "storage": {"emptyDir": true}}"#,
            Some(status),
        );
        let api = tokio::spawn(async move {
            // emptyDir: no claims listed. Members do not answer: no ConfigMap change here.
            let pdb = expect_nothing_running(&mut handle, None, None, false).await;
            assert_eq!(
                pdb["spec"]["minAvailable"], 2,
                "quorum of the last known 3 voters"
            );
            let st = expect_status(&mut handle).await;
            assert_eq!(st["pendingOperation"]["action"], "SetReplicas");
            assert_eq!(st["pendingOperation"]["replicas"], 3);
            assert_eq!(st["readyMembers"], 0);
            assert_eq!(st["leader"], Value::Null);
            let cm = expect_apply(&mut handle, CONFIGMAP).await;
            assert_eq!(cm["data"]["ETCD_INITIAL_CLUSTER_STATE"], "existing");
            let sts = expect_apply(&mut handle, STATEFULSET).await;
            assert_eq!(sts["spec"]["replicas"], 3);
            assert_eq!(expect_event(&mut handle).await["reason"], "Scaled");
        });
        c.reconcile(&ctx).await.unwrap();
        api.await.unwrap();
    }

    #[tokio::test]
    async fn missing_client_tls_secret_is_a_condition_and_a_warning_not_a_change() {
        let (ctx, mut handle) = context();
        let c = cluster(
            r#"{"tls": {"clientSecretName": "s"}, "storage": {"emptyDir": true}}"#,
            None,
        );
        let api = tokio::spawn(async move {
            expect_nothing_running(&mut handle, Some("s"), None, false).await;
            let st = expect_status(&mut handle).await;
            assert_eq!(st["pendingOperation"], Value::Null);
            let degraded = cond(&st, "Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], "ClientTlsSecretInvalid");
            assert!(
                degraded["message"]
                    .as_str()
                    .unwrap()
                    .contains("does not exist"),
                "{degraded}"
            );
            let ev = expect_event(&mut handle).await;
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["reason"], "ClientTlsSecretInvalid");
            // Nothing else: no StatefulSet, no ConfigMap.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                    .await
                    .is_err()
            );
        });
        let action = c.reconcile(&ctx).await.unwrap();
        // The Secret watch wakes the cluster; the requeue is only a safety net.
        assert_eq!(action, Action::requeue(REQUEUE_SECRET));
        api.await.unwrap();
    }

    /// Client TLS switched on with its Secret missing: the running StatefulSet keeps its
    /// template (its pods would not start without the Secret), and the cluster is blocked.
    #[tokio::test]
    async fn no_roll_out_while_the_client_tls_secret_is_missing() {
        let (ctx, mut handle) = context();
        let spec =
            r#"{"replicas": 3, "tls": {"clientSecretName": "s"}, "storage": {"emptyDir": true}}"#;
        let running = cluster(r#"{"replicas": 3, "storage": {"emptyDir": true}}"#, None);
        let sts = serde_json::to_value(children::statefulset(&running, 3)).unwrap();
        let c = cluster(spec, None);
        let api = tokio::spawn(async move {
            expect_nothing_running(&mut handle, Some("s"), Some(sts), false).await;
            let st = expect_status(&mut handle).await;
            assert_eq!(cond(&st, "Degraded")["reason"], "ClientTlsSecretInvalid");
            assert_eq!(
                expect_event(&mut handle).await["reason"],
                "ClientTlsSecretInvalid"
            );
            // No StatefulSet apply (nor anything else).
            assert!(
                tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                    .await
                    .is_err()
            );
        });
        let action = c.reconcile(&ctx).await.unwrap();
        assert_eq!(action, Action::requeue(REQUEUE_SECRET));
        api.await.unwrap();
    }

    #[test]
    fn a_secret_maps_to_the_clusters_of_its_namespace_naming_it() {
        let named = |name: &str, ns: &str, spec: &str| {
            let mut c = cluster(spec, None);
            c.metadata.name = Some(name.into());
            c.metadata.namespace = Some(ns.into());
            c
        };
        let clusters = [
            named("a", "ns", r#"{"tls": {"clientSecretName": "s"}}"#),
            named("b", "ns", r#"{"tls": {"peerSecretName": "s"}}"#),
            named("c", "ns", r#"{"tls": {"clientSecretName": "t"}}"#),
            named("d", "other", r#"{"tls": {"clientSecretName": "s"}}"#),
            named("e", "ns", "{}"),
        ];
        let secret = |name: &str, ns: &str| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let refs = |s: &Secret| -> Vec<String> {
            clusters_naming_secret(s, &clusters)
                .iter()
                .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
                .collect()
        };
        assert_eq!(refs(&secret("s", "ns")), ["ns/a", "ns/b"]);
        assert_eq!(refs(&secret("t", "ns")), ["ns/c"]);
        assert_eq!(refs(&secret("s", "other")), ["other/d"]);
        assert!(refs(&secret("u", "ns")).is_empty());
        assert!(refs(&Secret::default()).is_empty());
    }

    #[test]
    fn members_on_the_other_scheme_refuse_a_peer_switch_and_mark_a_client_roll_out() {
        let (a, b) = ("c-0".to_owned(), "c-1".to_owned());
        let http = vec!["http://c-0.c.ns.svc.cluster.local:2380".to_owned()];
        let https = vec!["https://c-1.c.ns.svc.cluster.local:2380".to_owned()];
        let unstarted = vec![];
        assert_eq!(
            first_other_scheme(false, [(&a, &http), (&b, &unstarted)]),
            None
        );
        assert_eq!(first_other_scheme(true, [(&b, &https)]), None);
        assert_eq!(
            first_other_scheme(true, [(&b, &https), (&a, &http)]),
            Some((&a, &http[0]))
        );
        assert_eq!(
            first_other_scheme(false, [(&b, &https)]),
            Some((&b, &https[0]))
        );
        let plain = Names::of(&cluster("{}", None));
        let peer_tls = Names::of(&cluster(r#"{"tls": {"peerSecretName": "p"}}"#, None));
        let client_tls = Names::of(&cluster(r#"{"tls": {"clientSecretName": "s"}}"#, None));
        // Peer TLS cannot be switched under running members.
        let why = peer_scheme_conflict(&peer_tls, [(&a, &http)]).unwrap();
        assert!(
            why.starts_with("member c-0 has peer URL http://c-0.")
                && why.contains("asks for https peer URLs"),
            "{why}"
        );
        let why = peer_scheme_conflict(&plain, [(&b, &https)]).unwrap();
        assert!(why.contains("asks for http peer URLs"), "{why}");
        assert_eq!(peer_scheme_conflict(&client_tls, [(&a, &http)]), None);
        // A client TLS switch rolls out until every member published the new scheme.
        let why = client_scheme_rollout(&client_tls, [(&a, &http)]).unwrap();
        assert!(
            why.starts_with("member c-0 still serves clients at http://c-0.")
                && why.contains("with https client URLs"),
            "{why}"
        );
        let why = client_scheme_rollout(&plain, [(&b, &https)]).unwrap();
        assert!(why.contains("with http client URLs"), "{why}");
        assert_eq!(client_scheme_rollout(&peer_tls, [(&a, &http)]), None);
    }

    #[test]
    fn a_client_tls_roll_out_is_reported_but_holds_no_membership_step() {
        let rolling = Some("member c-0 still serves clients at http://...".to_owned());
        let roll = Step::Wait {
            reason: "ClientTlsRollout",
            message: rolling.clone().unwrap(),
        };
        assert_eq!(rolling_out(Step::Converged, rolling.clone()), roll);
        let unreachable = Step::Wait {
            reason: "MembersUnhealthy",
            message: "c-0 unhealthy".into(),
        };
        assert_eq!(rolling_out(unreachable.clone(), rolling.clone()), roll);
        assert_eq!(rolling_out(unreachable.clone(), None), unreachable);
        assert_eq!(rolling_out(Step::Converged, None), Step::Converged);
        for step in [
            Step::Remove {
                id: 0x101,
                ordinal: 1,
                repair: true,
            },
            Step::AddLearner { ordinal: 3 },
            Step::Wait {
                reason: "LearnerStarting",
                message: String::new(),
            },
        ] {
            assert_eq!(rolling_out(step.clone(), rolling.clone()), step);
        }
    }

    #[test]
    fn client_tls_secret_needs_a_ca_a_certificate_and_a_key() {
        use k8s_openapi::ByteString;
        let pem = |label: &str| {
            ByteString(
                format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n").into_bytes(),
            )
        };
        let secret = |keys: &[(&str, ByteString)]| Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        };
        let full = [
            ("ca.crt", pem("CERTIFICATE")),
            ("tls.crt", pem("CERTIFICATE")),
            ("tls.key", pem("EC PRIVATE KEY")),
        ];
        let tls = member_tls("s", &secret(&full)).unwrap();
        assert_eq!(tls.ca_pem, full[0].1.0);
        assert_eq!(
            tls.identity,
            Some((full[1].1.0.clone(), full[2].1.0.clone()))
        );
        let err = member_tls("s", &secret(&full[..2])).unwrap_err();
        assert_eq!(err, "client TLS Secret s has no tls.key");
        let err = member_tls("s", &Secret::default()).unwrap_err();
        assert_eq!(err, "client TLS Secret s has no ca.crt");
        let mut bad = full.clone();
        bad[0].1 = ByteString(b"not pem".to_vec());
        let err = member_tls("s", &secret(&bad)).unwrap_err();
        assert!(err.contains("the CA holds no PEM certificate"), "{err}");
        bad = full.clone();
        bad[2].1 = pem("CERTIFICATE");
        let err = member_tls("s", &secret(&bad)).unwrap_err();
        assert!(err.contains("not a PEM private key"), "{err}");
    }

    #[test]
    fn a_refused_step_planned_again_leaves_status_unchanged() {
        let c = cluster("{}", None);
        let seen = Seen::default();
        let step = Step::AddLearner { ordinal: 2 };
        let first = c.status_for(&EtcdClusterStatus::default(), &seen, &step, true);
        let op = first.pending_operation.clone().unwrap();
        assert_eq!(op.action, crate::crd::Action::AddLearner);
        let mut older = first.clone();
        older.pending_operation.as_mut().unwrap().started_at = "2020-01-01T00:00:00Z".into();
        for c in &mut older.conditions {
            c.last_transition_time = "2020-01-01T00:00:00Z".into();
        }
        // Same step: nothing changes, so no status patch and no self-triggered reconcile.
        assert_eq!(c.status_for(&older, &seen, &step, true), older);
        // A different step gets a fresh record.
        let other = c.status_for(&older, &seen, &Step::AddLearner { ordinal: 3 }, true);
        assert_ne!(
            other.pending_operation.unwrap().started_at,
            "2020-01-01T00:00:00Z"
        );
    }

    #[tokio::test]
    async fn missing_finalizer_is_added_first() {
        let (ctx, mut handle) = context();
        let mut c = cluster("{}", None);
        c.metadata.finalizers = None;
        let api = tokio::spawn(async move {
            let (_, patch) = expect(&mut handle, "PATCH", "/apis/concord.dev/v1alpha1/namespaces/ns/etcdclusters/c", 200, json!({"apiVersion": "concord.dev/v1alpha1", "kind": "EtcdCluster", "metadata": {"name": "c"}, "spec": {}})).await;
            assert!(patch.to_string().contains(FINALIZER), "{patch}");
        });
        reconcile(Arc::new(c), Arc::new(ctx)).await.unwrap();
        api.await.unwrap();
    }
}
