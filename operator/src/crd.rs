//! The `EmbeddingRollout` custom resource (`rollout.akidb.io/v1alpha1`).
//!
//! Defaults live twice on purpose: as serde defaults (so the operator decodes objects that were
//! created before a field existed) and in the schema (so the API server fills them in and
//! `kubectl get -o yaml` shows the effective value).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::autoscaling::v2::MetricSpec;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements,
    Toleration, TopologySpreadConstraint, Volume,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;

pub const GROUP: &str = "rollout.akidb.io";
pub const VERSION: &str = "v1alpha1";
/// Annotation carrying a one-shot manual command; the operator clears it after acting.
pub const COMMAND_ANNOTATION: &str = "rollout.akidb.io/command";
/// Who wrote the command, as the writer says (the kubectl plugin: the user from a
/// SelfSubjectReview). Not verified by the API server; see docs/runbook.md.
pub const COMMAND_BY_ANNOTATION: &str = "rollout.akidb.io/command-by";
/// When the command was written (RFC 3339), as the writer says.
pub const COMMAND_AT_ANNOTATION: &str = "rollout.akidb.io/command-at";
/// How many manual commands `status.commands` keeps (newest last).
pub const COMMANDS_LIMIT: usize = 10;
/// Finalizer that keeps the primary Ingress on a live Service when the rollout is deleted.
pub const FINALIZER: &str = "rollout.akidb.io/finalizer";
/// Annotation the operator puts on the candidate Deployment: the candidate spec hash it was built from.
pub const CANDIDATE_HASH_ANNOTATION: &str = "rollout.akidb.io/candidate-hash";
/// Label on every object the operator creates, value = rollout name.
pub const ROLLOUT_LABEL: &str = "rollout.akidb.io/rollout";
/// How many analyses `status.history` keeps (newest last); all of them are kept in
/// `EmbeddingRolloutAnalysis` objects ([`crate::history`]).
pub const HISTORY_LIMIT: usize = 10;

/// Moves embedding traffic from a baseline service to a candidate, step by step, behind go/no-go gates.
// Clippy reads the repeated `type_ = ...` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rollout.akidb.io",
    version = "v1alpha1",
    kind = "EmbeddingRollout",
    namespaced,
    status = "EmbeddingRolloutStatus",
    shortname = "erollout",
    derive = "PartialEq",
    doc = "Moves embedding traffic from a baseline service to a candidate through nginx canary weights, behind Prometheus go/no-go gates, with automatic promotion and rollback.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.step"),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.currentWeight"
    ),
    printcolumn(
        name = "Candidate",
        type_ = "string",
        json_path = ".spec.candidate.image"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.ingress) ? 1 : 0) + (has(self.traffic) && has(self.traffic.nginx) ? 1 : 0) + (has(self.traffic) && has(self.traffic.gatewayAPI) ? 1 : 0) == 1", "message": "set exactly one traffic provider: ingress (or traffic.nginx) or traffic.gatewayAPI"},
    {"rule": "!has(self.steps) || size(self.steps) == 0 || self.steps[0].weight >= 1 || (has(self.traffic) && has(self.traffic.canaryHeader))", "message": "a first step of weight 0 sends only header traffic: it needs traffic.canaryHeader"},
    {"rule": "!has(self.steps) || self.steps.all(s, s.weight >= 1 || s == self.steps[0])", "message": "only the first step may have weight 0"}
]))]
pub struct EmbeddingRolloutSpec {
    /// The existing service traffic moves away from.
    pub baseline: BaselineSpec,
    /// What the operator deploys and moves traffic to.
    pub candidate: CandidateSpec,
    /// The primary Ingress (routes to the baseline Service): the nginx canary provider. The
    /// same as `traffic.nginx`; kept so existing rollouts work unchanged. Set this or `traffic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// How traffic moves: exactly one provider (nginx canary Ingress or Gateway API HTTPRoute),
    /// and optionally a header that always reaches the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
    /// Traffic steps. Weights strictly increasing, each 1..100, the last one 100; the first may be
    /// 0 when `traffic.canaryHeader` is set (only requests with that header reach the candidate).
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(s, s.weight <= 100)", "message": "every step weight must be between 1 and 100 (0 only for a header-only first step)"},
        {"rule": "self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))", "message": "step weights must be strictly increasing"},
        {"rule": "size(self) == 0 || self[size(self) - 1].weight == 100", "message": "the last step must have weight 100"}
    ]))]
    pub steps: Vec<Step>,
    /// How each step is judged.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// What happens after the last step.
    #[serde(default)]
    pub promotion: PromotionSpec,
    /// A rollback must finish within this; if it does not, the operator keeps trying and sets the
    /// `RollbackDeadlineExceeded` condition.
    #[serde(default = "default_rollback_deadline")]
    pub rollback_deadline: GoDuration,
    /// After a rollback, how long the candidate keeps its pods once all traffic is back on the
    /// baseline. Ingress controllers apply a route change a moment after the API server has it
    /// (Traefik batches provider changes for 2 s, nginx at its next reload); until then requests
    /// still reach the candidate, and a stopped pod would fail them. `0s`: at once. The default
    /// is Argo Rollouts' `abortScaleDownDelaySeconds`.
    #[serde(default = "default_rollback_scale_down_delay")]
    pub rollback_scale_down_delay: GoDuration,
    /// Holds the rollout at its current weight (analysis and rollback triggers keep running).
    #[serde(default)]
    pub paused: bool,
    /// Webhooks told of the rollout's milestones (step started, approval needed, promoted,
    /// rollback started and done, failed, manual commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationsSpec>,
}

/// Where the rollout's notifications go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsSpec {
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub webhooks: Vec<WebhookSpec>,
}

/// One receiver. Its URL comes from a Secret (it usually carries a token, as Slack's do), read at
/// each delivery, so a rotated URL is used at the next one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Names the receiver in events and logs.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The key of a Secret in the rollout's namespace holding the URL (http or https).
    pub url_secret_ref: SecretKeyRef,
    /// `Generic` JSON (every field, for programs) or `Slack` (an incoming-webhook message).
    #[serde(default)]
    pub format: WebhookFormat,
    /// What to send; empty: everything but `Warning`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub events: Vec<NotificationKind>,
    /// Per attempt.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: GoDuration,
    /// Attempts per notification (retried on timeouts, connection errors, 429 and 5xx, with
    /// backoff doubling from 1 s).
    #[serde(default = "default_webhook_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum WebhookFormat {
    /// `{"kind", "rollout", "namespace", "message", "phase", "step", ...}`.
    #[default]
    Generic,
    /// `{"text", "attachments": [...]}`, what Slack's (and Mattermost's, Rocket.Chat's) incoming
    /// webhooks take.
    Slack,
}

/// What a notification is about.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum NotificationKind {
    /// A step began (its weight applied).
    StepStarted,
    /// A step waits for a person's `promote`.
    ApprovalNeeded,
    Promoted,
    /// A rollback began, with its reason: sent at once, before the baseline is ready.
    RollbackStarted,
    /// The rollback is complete: the reason and how long traffic took to go back.
    RolledBack,
    Failed,
    /// A manual command was acted on (who sent it, as far as the API server tells).
    Command,
    /// Operator warnings: failing analyses, blocked traffic, invalid spec, evidence timeouts, a
    /// missed rollback deadline. They repeat while their cause lasts, so they are opt-in.
    Warning,
}

/// The existing service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSpec {
    /// Existing Deployment of the baseline.
    #[schemars(length(min = 1))]
    pub deployment: String,
    /// Existing Service the primary Ingress points at.
    #[schemars(length(min = 1))]
    pub service: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Value of the `service` label on the baseline's metrics.
    #[serde(default = "default_baseline_metrics_service")]
    pub metrics_service: String,
    /// Replicas kept after cutover (a warm standby for a fast rollback).
    #[serde(default = "default_standby_replicas")]
    #[schemars(range(min = 0))]
    pub standby_replicas: i32,
    /// Replicas to restore on rollback; default: what the baseline had when the rollout started
    /// (recorded in `status.baselineReplicasAtStart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<i32>,
}

/// The candidate the operator deploys (Deployment + Service `name`, owned by the rollout).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.autoscaling) || (self.autoscaling.maxReplicas >= self.replicas && (!has(self.fullReplicas) || self.autoscaling.maxReplicas >= self.fullReplicas))", "message": "candidate.autoscaling.maxReplicas must be at least replicas and fullReplicas"}
]))]
pub struct CandidateSpec {
    /// Deployment and Service name; default `<rollout>-candle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Container image. Changing it (or any other pod field here) restarts the rollout from step 0.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Replicas during the canary steps below 100 % (the autoscaler's minimum with
    /// `autoscaling`).
    #[serde(default = "default_candidate_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Replicas at 100 % and after promotion; default = `replicas` (the autoscaler's minimum
    /// then, with `autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub full_replicas: Option<i32>,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra container arguments, e.g. `--chaos-latency-ms=40`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Container environment.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Optional models file (YAML); mounted from ConfigMap `<name>-models` at /etc/candle/models.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<String>,
    /// Value of the `service` label on the candidate's metrics.
    #[serde(default = "default_candidate_metrics_service")]
    pub metrics_service: String,
    /// Not available by then: phase Failed, traffic untouched.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: GoDuration,
    /// Pod fields merged onto the pod the operator builds: a private registry, a model on a PVC
    /// or from an init container, scheduling, a service account, sidecars (docs/candidate.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<CandidateTemplate>,
    /// A HorizontalPodAutoscaler for the candidate, created by the operator and kept through
    /// promotion: each step's replicas become its minimum, this its maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<CandidateAutoscaling>,
}

/// The candidate's HorizontalPodAutoscaler (autoscaling/v2). The seed's: 2-10 replicas at 70 %
/// CPU (`replicas: 2`, `maxReplicas: 10`, the default target).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateAutoscaling {
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation target, percent of the requests (the pods need CPU requests).
    /// Used when `metrics` is empty.
    #[serde(default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: i32,
    /// Metric targets instead of CPU, as in an HPA's `spec.metrics` (e.g. requests per second
    /// per pod from a custom metrics adapter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub metrics: Vec<MetricSpec>,
}

/// The part of a PodTemplateSpec a candidate may carry, in the same shape, merged onto the
/// operator's pod: the operator's labels, annotations, container name, image, args, port and
/// `EMBEDDER_*` environment win; everything else here is added or replaces the default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CandidatePodSpec>,
}

/// Extra pod labels and annotations (the operator's own keys win).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Pod spec fields of the candidate. `containers` may hold an entry named `embedder`: its
/// volumeMounts and envFrom are added to the embedder container, and its securityContext,
/// probes, lifecycle, imagePullPolicy and (without `candidate.resources`) resources replace the
/// operator's. Every other entry is a sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.containers) || self.containers.all(c, c.name != 'embedder' || (!has(c.image) && !has(c.command) && !has(c.args) && !has(c.ports)))", "message": "the embedder container's image, command, args and ports come from candidate.image, candidate.args and candidate.port"},
    {"rule": "!has(self.initContainers) || self.initContainers.all(c, c.name != 'embedder')", "message": "the init container name embedder is reserved for the embedder container"},
    {"rule": "!has(self.volumes) || self.volumes.all(v, v.name != 'models')", "message": "the volume name models is reserved for candidate.models"}
]))]
pub struct CandidatePodSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub init_containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub containers: Vec<Container>,
}

/// The primary Ingress; the canary is `<name>-canary`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// How traffic moves from the baseline to the candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSpec {
    /// ingress-nginx canary annotations on `<name>-canary` (Traefik's kubernetesIngressNGINX
    /// provider honours them too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<IngressSpec>,
    /// Gateway API: the backendRefs weights of the user's HTTPRoute.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiSpec>,
    /// Requests carrying this header always reach the candidate while it takes traffic (testers,
    /// synthetic checks). A first step of weight 0 then sends only these requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_header: Option<CanaryHeader>,
}

/// The HTTPRoute whose rules send traffic to the baseline Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiSpec {
    pub http_route: HttpRouteRef,
    /// After promotion, remove the baseline's backendRef from the rules (default: keep it at
    /// weight 0, so a rollback is one weight change).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_baseline_on_promotion: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default: the rollout's namespace. Another namespace needs a ReferenceGrant there for the
    /// Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An exact header match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryHeader {
    /// Header name, e.g. `X-Canary`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// Exact value, e.g. `always`.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

/// The traffic provider of a rollout, resolved from `ingress` / `traffic`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Provider<'a> {
    Nginx(&'a IngressSpec),
    GatewayApi(&'a GatewayApiSpec),
}

/// One traffic step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Percent of traffic on the candidate, 1..100 (0: only `traffic.canaryHeader` requests).
    #[schemars(range(max = 100))]
    pub weight: u8,
    /// Minimum soak at this weight before the next step (needs a passing analysis too).
    pub duration: GoDuration,
    /// After the soak and a passing analysis, also wait for a person's go: the `promote`
    /// command (e.g. `kubectl erollout promote NAME` at the weekly go/no-go meeting). The gates
    /// and rollback triggers keep running while it waits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
}

/// When and how to judge the candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.interval.matches('^(0+([.]0+)?(ms|s|m|h|d)?)+$')", "message": "analysis.interval must be positive"},
    {"rule": "self.confidence >= 0.5 && self.confidence < 1.0", "message": "analysis.confidence must be in [0.5, 1)"}
]))]
pub struct AnalysisSpec {
    /// Time between analyses.
    #[serde(default = "default_interval")]
    pub interval: GoDuration,
    /// PromQL range of the recent measurements: the P95, error rate and breaker shown in each
    /// analysis, and the evidence of the hard rollback triggers. The gates judge all the requests
    /// of the current step instead (docs/analysis.md).
    #[serde(default = "default_window")]
    pub window: GoDuration,
    /// Probability that a candidate meeting every gate is never rolled back by them over the
    /// whole rollout; the same level bounds, per gate and step, promoting one that misses it.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// How long past a step's duration it may keep collecting evidence while its analyses are
    /// Inconclusive; then `noDataPolicy` decides (`Hold`: keep holding, with a warning, and
    /// start the gates' evidence over on fresh requests; `Fail`: roll back).
    #[serde(default = "default_evidence_timeout")]
    pub evidence_timeout: GoDuration,
    #[serde(default)]
    pub prometheus: PrometheusSpec,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default)]
    pub rollback_triggers: RollbackTriggers,
    /// Consecutive failing analyses that roll back.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1))]
    pub failure_limit: u32,
    /// What an analysis without data (or with Prometheus unreachable) counts as.
    #[serde(default)]
    pub no_data_policy: NoDataPolicy,
    /// Optional PromQL template overrides.
    #[serde(default)]
    pub queries: QueryOverrides,
}

/// Where Prometheus is and how to reach it: managed and multi-tenant Prometheus (Mimir, Cortex,
/// Thanos, a cloud provider's) need credentials, a tenant header or a private CA. Secrets and
/// ConfigMaps are read from the rollout's namespace at each analysis; their values are never
/// logged or written to the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.bearerToken) && has(self.basicAuth))", "message": "prometheus: set bearerToken or basicAuth, not both"},
    {"rule": "!has(self.headers) || self.headers.all(h, !h.name.matches('(?i)^authorization$'))", "message": "prometheus.headers: set the Authorization header through bearerToken or basicAuth"},
    {"rule": "!has(self.tls) || self.address.startsWith('https://')", "message": "prometheus.tls needs an https:// address"}
]))]
pub struct PrometheusSpec {
    #[serde(default = "default_prometheus_address")]
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub address: String,
    /// `Authorization: Bearer <token>`, the token from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretKeyRef>,
    /// HTTP basic authentication, both parts from Secret keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Extra request headers, e.g. `X-Scope-OrgID` for Mimir, Cortex or Thanos tenants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
}

/// A key of a Secret in the rollout's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key of a ConfigMap in the rollout's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: SecretKeyRef,
    pub password: SecretKeyRef,
}

/// One request header: a literal value or one from a Secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.value) != has(self.secretKeyRef)", "message": "a header takes value or secretKeyRef, exactly one"}
]))]
pub struct HttpHeader {
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// How to trust Prometheus's certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.caConfigMap) && has(self.caSecret))", "message": "prometheus.tls: set caConfigMap or caSecret, not both"}
]))]
pub struct PrometheusTls {
    /// PEM CA bundle from a ConfigMap key (e.g. a cluster's `kube-root-ca.crt`); when set, only
    /// these CAs are trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<ConfigMapKeyRef>,
    /// PEM CA bundle from a Secret key (e.g. a cert-manager `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// The name the certificate must carry, when it is not the address's host (an address by
    /// IP or through a tunnel). Sent as SNI too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// Go/no-go gates of one analysis. See operator/README.md for exact threshold semantics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.maxP95Ms > 0.0", "message": "gates.maxP95Ms must be positive"},
    {"rule": "self.maxP95OverBaselineMs > 0.0", "message": "gates.maxP95OverBaselineMs must be positive"},
    {"rule": "self.maxErrorRate > 0.0 && self.maxErrorRate <= 1.0", "message": "gates.maxErrorRate must be in (0, 1]"}
]))]
pub struct Gates {
    /// Candidate P95 must be strictly below this (seed: "P95 < 35ms").
    #[serde(default = "default_max_p95_ms")]
    pub max_p95_ms: f64,
    /// Candidate P95 must be at most baseline P95 + this (seed: "<= MLX + 5ms").
    #[serde(default = "default_max_p95_over_baseline_ms")]
    pub max_p95_over_baseline_ms: f64,
    /// Candidate error rate (errors / requests) must be strictly below this (seed: "< 0.5%").
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// The candidate's circuit breaker must have stayed closed over the window.
    #[serde(default = "default_true")]
    pub require_breaker_closed: bool,
    /// Fewer candidate requests than this in the step: the analysis cannot pass (Inconclusive).
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0))]
    pub min_requests: u64,
    /// Fewer baseline requests than this in the step: the comparison gate cannot pass.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0))]
    pub min_baseline_requests: u64,
    /// The user's own gates: PromQL queries judged against a bound at each analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(a, self.exists_one(b, b.name == a.name))", "message": "gates.custom names must be unique"}
    ]))]
    pub custom: Vec<CustomGate>,
    /// Embedding parity: the same texts sent to both Services must embed the same way
    /// (docs/analysis.md). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<ParitySpec>,
    /// Gate templates whose `gates` are judged with `custom`, read afresh at every analysis (an
    /// edit reaches running rollouts at their next look). A template that cannot be read, or a
    /// gate name used twice across `custom` and the templates, makes the analysis Inconclusive
    /// with the reason: it never passes without the gates it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub templates: Vec<GateTemplateRef>,
}

/// A reference to an `EmbeddingGateTemplate` in the rollout's namespace, or with
/// `clusterScope` to a `ClusterEmbeddingGateTemplate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateTemplateRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

impl GateTemplateRef {
    /// `EmbeddingGateTemplate team-gates` / `ClusterEmbeddingGateTemplate org-gates`.
    pub fn describe(&self) -> String {
        let kind = if self.cluster_scope {
            "ClusterEmbeddingGateTemplate"
        } else {
            "EmbeddingGateTemplate"
        };
        format!("{kind} {}", self.name)
    }
}

/// Gates a team writes once and many rollouts refer to (`analysis.gates.templates`), as Argo
/// Rollouts' AnalysisTemplate and Flagger's MetricTemplate. Each gate is a custom gate, with the
/// same placeholders (`{{service}}`, `{{baseline}}`, `{{window}}`, `{{step}}`), filled in for the
/// rollout that refers to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rollout.akidb.io",
    version = "v1alpha1",
    kind = "EmbeddingGateTemplate",
    namespaced,
    shortname = "egt",
    derive = "PartialEq",
    doc = "Custom go/no-go gates that EmbeddingRollouts in this namespace refer to by name (analysis.gates.templates).",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingGateTemplateSpec {
    #[schemars(length(min = 1, max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(a, self.exists_one(b, b.name == a.name))", "message": "gate names must be unique"}
    ]))]
    pub gates: Vec<CustomGate>,
}

/// The cluster-wide `EmbeddingGateTemplate`: one set of gates for rollouts in every namespace
/// (`clusterScope: true` in the reference).
// The same fields as `EmbeddingGateTemplateSpec`, twice: kube's `CustomResource` derive makes one
// kind per spec struct.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rollout.akidb.io",
    version = "v1alpha1",
    kind = "ClusterEmbeddingGateTemplate",
    shortname = "cegt",
    derive = "PartialEq",
    doc = "Custom go/no-go gates that EmbeddingRollouts in any namespace refer to by name (analysis.gates.templates with clusterScope).",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEmbeddingGateTemplateSpec {
    #[schemars(length(min = 1, max = 20))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(a, self.exists_one(b, b.name == a.name))", "message": "gate names must be unique"}
    ]))]
    pub gates: Vec<CustomGate>,
}

/// The embedding parity gate: at each analysis (or every `every`-th) the operator sends the same
/// texts straight to one ready endpoint of the baseline Service and of the candidate Service
/// (not through the ingress) and compares the embeddings text by text: same count, dimension
/// and model, and cosine similarity at least `minCosine` for every text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minCosine > 0.0 && self.minCosine <= 1.0", "message": "parity.minCosine must be in (0, 1]"}
]))]
pub struct ParitySpec {
    /// The smallest cosine similarity any probe text may have between the two embeddings
    /// (the INT8 model against f32 reaches about 0.9995).
    #[serde(default = "default_min_cosine")]
    pub min_cosine: f64,
    /// The API both sides speak: `Embed` (`POST /api/v1/embed`) or `OpenAI`
    /// (`POST /v1/embeddings`).
    #[serde(default)]
    pub api: EmbeddingApi,
    /// The baseline's API when it differs from `api` (a baseline that is not this embedder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_api: Option<EmbeddingApi>,
    /// The model to ask both sides for (and that they must answer with); default: each
    /// server's default model, whose names must then agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model: Option<String>,
    /// The baseline's model name when it differs from `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub baseline_model: Option<String>,
    /// The user's own texts: a ConfigMap key holding one text per line, or a JSON/YAML list of
    /// strings. Default: a built-in set (short, longer than the truncation length, non-Latin
    /// scripts, emoji, punctuation only, numbers, code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub texts: Option<ConfigMapKeyRef>,
    /// Texts per probe, in one request to each side; a larger set is rotated through.
    #[serde(default = "default_parity_max_texts")]
    #[schemars(range(min = 1, max = 64))]
    pub max_texts: u32,
    /// Longer texts are cut (at a character boundary) to this many bytes, and the evidence says so.
    #[serde(default = "default_parity_max_text_bytes")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_text_bytes: u32,
    /// Probe at the first analysis of every step and then at every `every`-th; the looks
    /// between carry the step's latest parity finding.
    #[serde(default = "default_parity_every")]
    #[schemars(range(min = 1, max = 1000))]
    pub every: u32,
    /// Per request.
    #[serde(default = "default_parity_timeout")]
    pub timeout: GoDuration,
    /// false: reported in every analysis, never holds or fails the rollout.
    #[serde(default = "default_true")]
    pub blocking: bool,
}

/// An embedding HTTP API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EmbeddingApi {
    /// `POST /api/v1/embed` `{"texts": [...], "model"}` -> `{"model", "embeddings": [[...]]}`.
    #[default]
    Embed,
    /// `POST /v1/embeddings` `{"input": [...], "model"}` -> `{"model", "data": [{"embedding", "index"}]}`.
    OpenAI,
}

impl EmbeddingApi {
    pub fn path(self) -> &'static str {
        match self {
            EmbeddingApi::Embed => "/api/v1/embed",
            EmbeddingApi::OpenAI => "/v1/embeddings",
        }
    }
}

/// One of the user's gates: `query` must stay at or below `max` (or at or above `min`).
/// Placeholders: `{{service}}` (candidate metrics service), `{{baseline}}` (baseline metrics
/// service), `{{window}}` (analysis window), `{{step}}` (the current step so far, seconds).
/// The query should return one number; several series are reduced to the worst one (the
/// largest against `max`, the smallest against `min`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.max) != has(self.min)", "message": "a custom gate takes max or min, exactly one"},
    {"rule": "has(self.samplesQuery) == has(self.minSamples)", "message": "samplesQuery and minSamples go together"}
]))]
pub struct CustomGate {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// How much the value rests on (e.g. requests in the window); below `minSamples` the gate
    /// is Inconclusive instead of passing or failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub samples_query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<f64>,
    /// false: reported in every analysis, never holds or fails the rollout.
    #[serde(default = "default_true")]
    pub blocking: bool,
}

/// Conditions that roll back regardless of `failureLimit`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.p95Ms > 0.0", "message": "rollbackTriggers.p95Ms must be positive"},
    {"rule": "self.errorRate > 0.0 && self.errorRate <= 1.0", "message": "rollbackTriggers.errorRate must be in (0, 1]"}
]))]
pub struct RollbackTriggers {
    /// Candidate P95 strictly above this for `p95SustainedFor` rolls back.
    #[serde(default = "default_trigger_p95_ms")]
    pub p95_ms: f64,
    #[serde(default = "default_p95_sustained_for")]
    pub p95_sustained_for: GoDuration,
    /// Candidate error rate strictly above this rolls back at once.
    #[serde(default = "default_trigger_error_rate")]
    pub error_rate: f64,
}

/// What an Inconclusive analysis (no data, Prometheus errors, NaN) counts as.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum NoDataPolicy {
    /// Hold the step: neither a pass nor a failure.
    #[default]
    Hold,
    /// Count it as a failure towards `failureLimit`.
    Fail,
}

/// PromQL template overrides; placeholders `{{service}}`, `{{window}}`, `{{quantile}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// Requests per latency bucket, grouped by `le` (the latency gates count these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_buckets: Option<String>,
    /// Failed requests (the error gate and trigger count these against `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<String>,
}

/// After the last step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionSpec {
    /// Promote by itself after the last step passed; false waits for `promote`/`promote-full`.
    #[serde(default = "default_true")]
    pub auto: bool,
    /// After this soak in Promoted, scale the baseline to 0 (phase Decommissioned). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommission_after: Option<GoDuration>,
}

// ---------------------------------------------------------------------------------------------
// Status: everything the state machine needs lives here, so a restarted operator continues.
// ---------------------------------------------------------------------------------------------

/// Observed state of the rollout; written once per reconcile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingRolloutStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Index into `spec.steps`.
    #[serde(default)]
    pub current_step: u32,
    /// The current step as people count it, `2/4` for the second of four (what `kubectl get`
    /// shows); absent before the rollout starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Canary weight the operator has set (0 before the first step and after rollback).
    #[serde(default)]
    pub current_weight: u8,
    /// When `currentWeight` was applied for the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<DateTime<Utc>>,
    /// When the gates' evidence of the current step began, when not at `stepStartedAt`: the
    /// step's evidence was still inconclusive `evidenceTimeout` after its duration, so the gates
    /// started over on fresh requests (docs/analysis.md, "Waiting for evidence").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_started_at: Option<DateTime<Utc>>,
    /// How often the current step's evidence started over; each restart's tests spend a smaller
    /// share of the confidence budget.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub evidence_restarts: u32,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_at: Option<DateTime<Utc>>,
    /// Since when the operator waits for the candidate to become available/scaled (progress deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisRecord>,
    /// The last analyses, newest last (bounded). Every analysis of the rollout is kept in its
    /// `EmbeddingRolloutAnalysis` objects (`kubectl get eranalysis -l rollout.akidb.io/rollout=NAME`),
    /// appended from here after each status write.
    #[serde(default)]
    pub history: Vec<AnalysisRecord>,
    /// Analyses taken since the current step's weight was applied (the look index that spends
    /// the confidence budget).
    #[serde(default)]
    pub step_analyses: u32,
    /// Gates whose sequential test has confidently failed in the current step. A sequential test
    /// stops at its first crossing, so they stay failed until the step ends (docs/analysis.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_failed_gates: Vec<String>,
    /// Failing analyses in a row (Inconclusive counts only with `noDataPolicy: Fail`).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// First failing analysis of the current streak (for the "rolled back N s after the first
    /// failing check" measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure_at: Option<DateTime<Utc>>,
    /// Since when the candidate P95 is above `rollbackTriggers.p95Ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_breach_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// Pause set by the `pause` command (independent of `spec.paused`).
    #[serde(default)]
    pub manual_pause: bool,
    /// The command annotation value already acted on; a stale read of the same annotation (before
    /// the clear is observed) is not applied twice. Reset when the annotation is seen absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_command: Option<String>,
    /// One summary per step of the current candidate, oldest first: when, how long, how much
    /// evidence, the worst measurements, the verdicts, who approved it, how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_summaries: Vec<StepSummary>,
    /// The manual commands acted on, newest last (bounded): what, who as far as the API server
    /// can tell, when, and what it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandRecord>,
    /// When the rollout reached Promoted (decommission timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub conditions: Vec<RolloutCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Candidate image of the rollout in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_image: Option<String>,
    /// Hash of the candidate pod fields of the rollout in flight; a different spec hash restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_hash: Option<String>,
    /// Baseline `spec.replicas` when the rollout started (restored on rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_replicas_at_start: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Lifecycle of a rollout; see the state diagram in operator/README.md.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum Phase {
    /// Not started yet.
    #[default]
    Pending,
    /// Candidate being deployed; no traffic.
    Deploying,
    /// Stepping through the weights with analysis.
    Progressing,
    /// Held at the current weight (analysis and rollback triggers keep running).
    Paused,
    /// Last step passed: scaling the candidate up, switching the primary Ingress, retiring the canary.
    Promoting,
    /// All traffic on the candidate through the primary Ingress; baseline on standby.
    Promoted,
    /// Promoted and the baseline scaled to 0 after `decommissionAfter`.
    Decommissioned,
    /// Returning all traffic to the baseline.
    RollingBack,
    /// All traffic back on the baseline; `status.rollback` says why and how long it took.
    RolledBack,
    /// Candidate never became available; traffic untouched.
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Deploying => "Deploying",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Promoted => "Promoted",
            Phase::Decommissioned => "Decommissioned",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }

    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Deploying,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoting,
        Phase::Promoted,
        Phase::Decommissioned,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of one analysis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// Circuit breaker state as exported by the embedder (0 closed, 1 open, 2 half-open).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// One analysis: what was measured and what it meant. Non-finite measurements are stored as absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRecord {
    pub time: DateTime<Utc>,
    /// Step index and weight the analysis was taken at.
    pub step: u32,
    pub weight: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p95_ms: Option<f64>,
    /// Candidate errors / requests over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error_rate: Option<f64>,
    /// Worst candidate breaker state over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_state: Option<BreakerState>,
    /// Candidate requests over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_count: Option<f64>,
    /// Candidate and baseline requests since the step's weight was applied (the gates' evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_step_requests: Option<u64>,
    /// The look within the step (1 = first analysis of the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look: Option<u32>,
    /// Each gate's finding, with its evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    /// Human-readable reason for every gate that did not pass (and for skipped gates).
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// One gate of one analysis: what it measured, against what, with how much evidence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// `maxP95Ms`, `maxP95OverBaselineMs`, `maxErrorRate`, `requireBreakerClosed`, `minRequests`.
    pub gate: String,
    pub verdict: Verdict,
    /// For people, e.g. `P(>35 ms) = 2.1 % (99.97 % CI 0.9-4.0 %, n = 312)`.
    pub evidence: String,
    /// The measured fraction or value and its confidence bounds (same unit as `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Requests the finding rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
}

/// One step of the rollout, summed up (the go/no-go meeting's numbers).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    /// Step index (0-based, as `currentStep`) and its weight.
    pub step: u32,
    pub weight: u8,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// `Advanced`, `Promoted`, `RolledBack`, `Restarted` (redeployed) or `Failed`; absent while
    /// the step runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Analyses in the step and their verdicts.
    #[serde(default)]
    pub analyses: u32,
    #[serde(default)]
    pub passed: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub inconclusive: u32,
    /// Requests the gates counted (the step's evidence at its largest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_requests: Option<u64>,
    /// The worst window P95 of each service and the worst candidate error rate seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_candidate_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_baseline_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The smallest embedding parity cosine probed (with `gates.parity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_parity_cosine: Option<f64>,
    /// Who sent the promote command that moved the step on (`command-by`, else the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// One manual command and what became of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    /// The annotation's value, e.g. `abort`.
    pub command: String,
    /// `rollout.akidb.io/command-by`, as its writer put it (not authenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The field manager that last wrote the command annotation (from managedFields: the
    /// client's `fieldManager`, e.g. `kubectl-embeddingrollout` or `kubectl-annotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// `rollout.akidb.io/command-at`, as its writer put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// When the operator acted on it.
    pub handled_at: DateTime<Utc>,
    /// The phase it met.
    pub phase: Phase,
    /// `Applied`, `Ignored` or `Unknown`.
    pub result: String,
    /// What it did (the event's message).
    pub message: String,
}

/// Why and how fast traffic went back to the baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    pub reason: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// completedAt - startedAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// First failing check of the streak that caused the rollback (absent for manual aborts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure_at: Option<DateTime<Utc>>,
    /// completedAt - firstFailureAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_first_failure: Option<f64>,
    /// Phase the rollback started from.
    pub from_phase: Phase,
    /// When the baseline had all the replicas it is restored to ready (after the cutover it
    /// is scaled up from standby before traffic moves back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_ready_at: Option<DateTime<Utc>>,
    /// baselineReadyAt - startedAt: how long scaling the baseline back up took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_ready_seconds: Option<f64>,
}

/// A standard-shaped condition (type, status, reason, message, lastTransitionTime).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// The evidence kept: every analysis of a rollout, outside the rollout object.
// ---------------------------------------------------------------------------------------------

/// The most analyses one `EmbeddingRolloutAnalysis` holds (its schema's `maxItems`); the operator
/// also starts a new object before one passes [`crate::history::OBJECT_BYTES`].
pub const ANALYSES_PER_OBJECT: usize = 200;
/// Label on every `EmbeddingRolloutAnalysis`: the step index (0-based, as `status.currentStep`).
pub const STEP_LABEL: &str = "rollout.akidb.io/step";
/// Label on every `EmbeddingRolloutAnalysis`: when its step began (`20250301T100000Z`). With the
/// step index it tells two runs of one step apart (a retry, a new candidate).
pub const STEP_STARTED_LABEL: &str = "rollout.akidb.io/step-started-at";
/// Label on every `EmbeddingRolloutAnalysis`: its position among the objects of its step (0, 1, ...).
pub const CHUNK_LABEL: &str = "rollout.akidb.io/chunk";

/// The analyses of one run of a step of an EmbeddingRollout, in order. A step holds as many of
/// these as its analyses need (at most 200 analyses or 256 KiB each), so the rollout object
/// never grows with them. Owned by the rollout: deleted with it. Written only by the operator,
/// one append per analysis (as Argo Rollouts keeps AnalysisRuns). docs/runbook.md: reading them
/// at a go/no-go meeting.
// Clippy reads the repeated `type_ = ...` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rollout.akidb.io",
    version = "v1alpha1",
    kind = "EmbeddingRolloutAnalysis",
    plural = "embeddingrolloutanalyses",
    namespaced,
    shortname = "eranalysis",
    derive = "PartialEq",
    doc = "Every analysis of one step of an EmbeddingRollout (a step of many analyses spans several of these), kept for the rollout's life and deleted with it.",
    printcolumn(name = "Rollout", type_ = "string", json_path = ".spec.rollout"),
    printcolumn(name = "Step", type_ = "string", json_path = ".spec.stepOf"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".spec.weight"),
    printcolumn(name = "Analyses", type_ = "integer", json_path = ".spec.count"),
    printcolumn(name = "Pass", type_ = "integer", json_path = ".spec.passed"),
    printcolumn(name = "Fail", type_ = "integer", json_path = ".spec.failed"),
    printcolumn(
        name = "Inconclusive",
        type_ = "integer",
        json_path = ".spec.inconclusive"
    ),
    printcolumn(name = "Latest", type_ = "string", json_path = ".spec.lastVerdict"),
    printcolumn(name = "Last-Analysis", type_ = "date", json_path = ".spec.lastTime"),
    printcolumn(
        name = "Step-Started",
        type_ = "string",
        json_path = ".spec.stepStartedAt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingRolloutAnalysisSpec {
    /// The EmbeddingRollout (its name; also the owner reference and the `rollout.akidb.io/rollout` label).
    #[schemars(length(min = 1, max = 253))]
    pub rollout: String,
    /// Step index (0-based, as `status.currentStep`).
    pub step: u32,
    /// The step as people count it, `2/4` (what `kubectl get` shows).
    pub step_of: String,
    /// The canary weight of the step, percent.
    #[schemars(range(max = 100))]
    pub weight: u8,
    /// When the step's weight was applied (as `stepSummaries[].startedAt`).
    pub step_started_at: DateTime<Utc>,
    /// This object's position among those of its step (0, 1, ...): read them in this order.
    pub chunk: u32,
    /// Analyses held, and how many of them passed, failed, were inconclusive.
    pub count: u32,
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
    /// The first and the latest analysis held, and the latest one's verdict.
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    pub last_verdict: Verdict,
    /// The analyses, oldest first.
    #[schemars(length(max = ANALYSES_PER_OBJECT))]
    pub analyses: Vec<StoredAnalysis>,
}

/// One analysis as kept in an `EmbeddingRolloutAnalysis`: the numbers of `status.lastAnalysis`
/// under short keys (twenty thousand of them make a two-week step). The step and weight are the
/// object's; each gate's evidence sentence is left out (its numbers are kept, and `r` holds the
/// reason of every gate that did not pass); measurements keep six significant digits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct StoredAnalysis {
    /// When it was taken: unique within a rollout, the key an append is checked against.
    pub t: DateTime<Utc>,
    /// Verdict.
    pub v: Verdict,
    /// The look within the step (1 = its first analysis). (Not `n`: YAML 1.1 parsers, Go's
    /// among them, read a bare `n` as false, and the CRD lists its keys bare.)
    #[serde(rename = "lk", default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Candidate P95 over the window, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c95: Option<f64>,
    /// Baseline P95 over the window, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b95: Option<f64>,
    /// Candidate error rate over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce: Option<f64>,
    /// Baseline error rate over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub be: Option<f64>,
    /// Worst candidate breaker state over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub br: Option<BreakerState>,
    /// Candidate requests over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rq: Option<f64>,
    /// Candidate requests since the step began (the gates' evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs: Option<u64>,
    /// Baseline requests since the step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bs: Option<u64>,
    /// Each gate's finding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub g: Vec<StoredGate>,
    /// Why each gate that did not pass did not, and notes (as `reasons`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r: Vec<String>,
}

/// One gate of a kept analysis (as `status.lastAnalysis.gates[]`, without the evidence sentence).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct StoredGate {
    /// Gate name (`maxP95Ms`, a custom gate's name, ...).
    #[serde(rename = "id")]
    pub n: String,
    /// Verdict.
    pub v: Verdict,
    /// The measured value or fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
    /// Its confidence bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<f64>,
    /// The threshold (same unit as `x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub th: Option<f64>,
    /// Requests the finding rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Helpers on the spec.
// ---------------------------------------------------------------------------------------------

impl EmbeddingRollout {
    /// Candidate Deployment/Service name: `spec.candidate.name` or `<rollout>-candle`.
    pub fn candidate_name(&self) -> String {
        self.spec
            .candidate
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-candle", self.metadata.name.as_deref().unwrap_or("")))
    }
}

impl IngressSpec {
    /// Name of the canary Ingress the operator owns.
    pub fn canary_name(&self) -> String {
        format!("{}-canary", self.name)
    }
}

impl EmbeddingRolloutSpec {
    /// The traffic provider; `None` when the spec names none or two (the schema rejects both).
    pub fn provider(&self) -> Option<Provider<'_>> {
        let traffic = self.traffic.as_ref();
        let nginx = traffic.and_then(|t| t.nginx.as_ref());
        let gateway = traffic.and_then(|t| t.gateway_api.as_ref());
        match (&self.ingress, nginx, gateway) {
            (Some(i), None, None) | (None, Some(i), None) => Some(Provider::Nginx(i)),
            (None, None, Some(g)) => Some(Provider::GatewayApi(g)),
            _ => None,
        }
    }

    /// The nginx provider's primary Ingress, when that is the provider.
    pub fn nginx(&self) -> Option<&IngressSpec> {
        match self.provider() {
            Some(Provider::Nginx(i)) => Some(i),
            _ => None,
        }
    }

    pub fn canary_header(&self) -> Option<&CanaryHeader> {
        self.traffic.as_ref().and_then(|t| t.canary_header.as_ref())
    }

    /// What carries the traffic, as people name it: `primary Ingress akidb-ingress`, `HTTPRoute embed`,
    /// `HTTPRoute gateways/embed` (in another namespace).
    pub fn traffic_object(&self) -> String {
        match self.provider() {
            Some(Provider::Nginx(i)) => format!("primary Ingress {}", i.name),
            Some(Provider::GatewayApi(g)) => match &g.http_route.namespace {
                Some(ns) => format!("HTTPRoute {ns}/{}", g.http_route.name),
                None => format!("HTTPRoute {}", g.http_route.name),
            },
            None => "no traffic provider".to_string(),
        }
    }
}

impl CandidateSpec {
    /// Replicas at 100 % and after promotion.
    pub fn full_replicas(&self) -> i32 {
        self.full_replicas.unwrap_or(self.replicas)
    }
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            window: default_window(),
            prometheus: PrometheusSpec::default(),
            gates: Gates::default(),
            rollback_triggers: RollbackTriggers::default(),
            failure_limit: default_failure_limit(),
            confidence: default_confidence(),
            evidence_timeout: default_evidence_timeout(),
            no_data_policy: NoDataPolicy::default(),
            queries: QueryOverrides::default(),
        }
    }
}

impl Default for PrometheusSpec {
    fn default() -> Self {
        Self {
            address: default_prometheus_address(),
            bearer_token: None,
            basic_auth: None,
            headers: Vec::new(),
            tls: None,
        }
    }
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            max_p95_ms: default_max_p95_ms(),
            max_p95_over_baseline_ms: default_max_p95_over_baseline_ms(),
            max_error_rate: default_max_error_rate(),
            require_breaker_closed: true,
            min_requests: default_min_requests(),
            min_baseline_requests: default_min_requests(),
            custom: Vec::new(),
            parity: None,
            templates: Vec::new(),
        }
    }
}

impl Default for RollbackTriggers {
    fn default() -> Self {
        Self {
            p95_ms: default_trigger_p95_ms(),
            p95_sustained_for: default_p95_sustained_for(),
            error_rate: default_trigger_error_rate(),
        }
    }
}

impl Default for PromotionSpec {
    fn default() -> Self {
        Self {
            auto: true,
            decommission_after: None,
        }
    }
}

/// Labels the operator puts on the candidate's objects.
pub fn candidate_labels(rollout: &str, candidate: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), candidate.to_string()),
        (ROLLOUT_LABEL.to_string(), rollout.to_string()),
    ])
}

// Default values (shared by serde and the schema).

/// The seed's plan: 1 % for 48 h, 10 % for 48 h, 50 % for 72 h, 100 % for 7 days.
pub fn default_steps() -> Vec<Step> {
    [(1, "48h"), (10, "48h"), (50, "72h"), (100, "7d")]
        .into_iter()
        .map(|(weight, d)| Step {
            weight,
            duration: GoDuration::from(d),
            approval: false,
        })
        .collect()
}
pub(crate) fn default_webhook_timeout() -> GoDuration {
    "5s".into()
}
pub(crate) fn default_webhook_attempts() -> u32 {
    4
}
fn default_rollback_deadline() -> GoDuration {
    "5m".into()
}
fn default_rollback_scale_down_delay() -> GoDuration {
    "30s".into()
}
fn default_port() -> i32 {
    8080
}
fn default_baseline_metrics_service() -> String {
    "mlx".into()
}
fn default_candidate_metrics_service() -> String {
    "candle".into()
}
fn default_standby_replicas() -> i32 {
    2
}
fn default_candidate_replicas() -> i32 {
    2
}
fn default_target_cpu() -> i32 {
    70
}
fn default_progress_deadline() -> GoDuration {
    "10m".into()
}
fn default_interval() -> GoDuration {
    "1m".into()
}
fn default_window() -> GoDuration {
    "5m".into()
}
fn default_prometheus_address() -> String {
    "http://prometheus.monitoring:9090".into()
}
fn default_max_p95_ms() -> f64 {
    35.0
}
fn default_max_p95_over_baseline_ms() -> f64 {
    5.0
}
fn default_max_error_rate() -> f64 {
    0.005
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn default_min_cosine() -> f64 {
    0.999
}
fn default_parity_max_texts() -> u32 {
    16
}
fn default_parity_max_text_bytes() -> u32 {
    4096
}
fn default_parity_every() -> u32 {
    1
}
fn default_parity_timeout() -> GoDuration {
    "10s".into()
}
fn default_true() -> bool {
    true
}
fn default_min_requests() -> u64 {
    100
}
fn default_confidence() -> f64 {
    0.99
}
fn default_evidence_timeout() -> GoDuration {
    "1h".into()
}
fn default_failure_limit() -> u32 {
    3
}
fn default_trigger_p95_ms() -> f64 {
    50.0
}
fn default_p95_sustained_for() -> GoDuration {
    "5m".into()
}
fn default_trigger_error_rate() -> f64 {
    0.01
}

/// The CRD as YAML, exactly as committed in `crds/embeddingrollouts.rollout.akidb.io.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&EmbeddingRollout::crd()).expect("the CRD serialises to YAML")
}

/// Every CRD of the project as (file name under `crds/`, YAML), as `make crds` writes them.
pub fn crd_files() -> Vec<(String, String)> {
    use kube::CustomResourceExt;
    let yaml = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        let file = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
        (file, serde_yaml::to_string(&crd).expect("the CRD serialises to YAML"))
    };
    vec![
        yaml(EmbeddingRollout::crd()),
        yaml(EmbeddingGateTemplate::crd()),
        yaml(ClusterEmbeddingGateTemplate::crd()),
        yaml(EmbeddingRolloutAnalysis::crd()),
    ]
}
