{{- define "lrg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lrg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "lrg.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "lrg.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "lrg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lrg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lrg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lrg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lrg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lrg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lrg.configSecret" -}}
{{- default (printf "%s-config" (include "lrg.fullname" .)) .Values.config.existingSecret }}
{{- end }}

{{/* The fleet's maximum size: what the degraded-mode budget is split by. */}}
{{- define "lrg.maxReplicas" -}}
{{- if hasKey .Values.settings "max_replicas" }}{{ .Values.settings.max_replicas }}
{{- else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}
{{- else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "lrg.drainSeconds" -}}
{{- default 20 .Values.settings.drain_seconds }}
{{- end }}
