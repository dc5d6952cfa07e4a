{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ce.fullname" -}}
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

{{- define "ce.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ce.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: embedder
app.kubernetes.io/part-of: embedding-rollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ce.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ce.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ce.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}


{{/* The /models volume, or nothing when the model is baked into the image. */}}
{{- define "ce.modelVolume" -}}
{{- $mv := .Values.modelVolume -}}
{{- if eq $mv.type "persistentVolumeClaim" -}}
{{- if not $mv.claimName }}{{ fail "modelVolume.claimName is required when modelVolume.type is persistentVolumeClaim" }}{{ end -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ $mv.claimName }}
    readOnly: true
{{- else if eq $mv.type "volume" -}}
{{- if not $mv.volume }}{{ fail "modelVolume.volume is required when modelVolume.type is volume" }}{{ end -}}
- name: models
  {{- toYaml $mv.volume | nindent 2 }}
{{- else if eq $mv.type "init" -}}
{{- if or (not $mv.init.image) (not $mv.init.command) }}{{ fail "modelVolume.init.image and modelVolume.init.command are required when modelVolume.type is init" }}{{ end -}}
- name: models
  emptyDir:
    sizeLimit: {{ $mv.init.sizeLimit }}
{{- else if ne $mv.type "baked" -}}
{{- fail (printf "modelVolume.type must be baked, persistentVolumeClaim, volume or init, not %q" $mv.type) -}}
{{- end -}}
{{- end -}}
