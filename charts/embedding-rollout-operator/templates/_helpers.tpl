{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ero.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ero.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ero.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ero.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ero.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ero.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: embedding-rollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ero.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ero.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ero.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Rules of the operator's ClusterRole: files/clusterrole.yaml is a copy of operator/rbac/clusterrole.yaml
     (scripts/sync-chart-crds.sh), so the chart and the operator's own manifest cannot drift.
     Lease rules are left out: in a ClusterRole they would let the operator update every Lease in the
     cluster (kube-system's leader elections included); the chart grants the one named Lease in the
     release namespace instead (rbac.yaml, "-leader-election"). */}}
{{- define "ero.rules" -}}
{{- $role := .Files.Get "files/clusterrole.yaml" | fromYaml -}}
{{- if not $role.rules -}}
{{- fail "files/clusterrole.yaml has no rules: run scripts/sync-chart-crds.sh" -}}
{{- end -}}
{{- $rules := list -}}
{{- range $role.rules -}}
{{- if has "coordination.k8s.io" .apiGroups -}}
{{- if gt (len .apiGroups) 1 -}}
{{- fail "files/clusterrole.yaml: keep coordination.k8s.io in a rule of its own" -}}
{{- end -}}
{{- else -}}
{{- $rules = append $rules . -}}
{{- end -}}
{{- end -}}
{{- if .Values.gatewayAPI.enabled -}}
{{- /* The Gateway API provider: read and watch the users' HTTPRoutes, patch only their weights. */ -}}
{{- $rules = append $rules (dict "apiGroups" (list "gateway.networking.k8s.io") "resources" (list "httproutes") "verbs" (list "get" "list" "watch" "patch")) -}}
{{- end -}}
{{- if .Values.webDashboard.enabled -}}
{{- /* The web dashboard: one rollout's page lists its Events. */ -}}
{{- $rules = append $rules (dict "apiGroups" (list "events.k8s.io") "resources" (list "events") "verbs" (list "list")) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* The web dashboard's listen address (IPv6 in brackets); fails when it leaves the pod's
     loopback without a token. */}}
{{- define "ero.dashboardAddr" -}}
{{- $d := .Values.webDashboard -}}
{{- $loopback := has $d.address (list "127.0.0.1" "localhost" "::1") -}}
{{- if and (not $loopback) (not $d.tokenSecret) -}}
{{- fail (printf "webDashboard.address %s exposes the dashboard beyond the pod: set webDashboard.tokenSecret" $d.address) -}}
{{- end -}}
{{- if contains ":" $d.address -}}
{{- printf "[%s]:%v" $d.address $d.port -}}
{{- else -}}
{{- printf "%s:%v" $d.address $d.port -}}
{{- end -}}
{{- end -}}

{{/* Whether the Service carries the dashboard's port. */}}
{{- define "ero.dashboardExposed" -}}
{{- if and .Values.webDashboard.enabled (not (has .Values.webDashboard.address (list "127.0.0.1" "localhost" "::1"))) -}}true{{- end -}}
{{- end -}}

{{/* The Secrets of the global webhooks (notifications.webhooks[].urlSecretRef.name), each name once,
     as a JSON list (read with fromJsonArray). Fails on a webhook that names none: the operator may
     read exactly these Secrets, in the release namespace. */}}
{{- define "ero.globalNotificationSecrets" -}}
{{- $names := list -}}
{{- range $i, $w := .Values.notifications.webhooks -}}
{{- $ref := default (dict) (and (kindIs "map" $w) $w.urlSecretRef) -}}
{{- if not (and (kindIs "map" $ref) $ref.name) -}}
{{- fail (printf "notifications.webhooks[%d].urlSecretRef.name is required (the Secret in the release namespace holding the URL)" $i) -}}
{{- end -}}
{{- $names = append $names $ref.name -}}
{{- end -}}
{{- toJson (uniq $names) -}}
{{- end -}}

{{/* The path the operator reads the global webhooks from (the ConfigMap's mount). */}}
{{- define "ero.notificationsConfigDir" -}}/etc/embedding-rollout/notifications{{- end -}}
