{{/* Chart name. */}}
{{- define "radnode.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "radnode.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Common labels. */}}
{{- define "radnode.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "radnode.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels. */}}
{{- define "radnode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "radnode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the Secret with the signing identity, or "" for a self-signed one. */}}
{{- define "radnode.signingSecret" -}}
{{- if .Values.signing.existingSecret }}
{{- .Values.signing.existingSecret }}
{{- else if and .Values.signing.key .Values.signing.cert }}
{{- printf "%s-signing" (include "radnode.fullname" .) }}
{{- end }}
{{- end }}

{{/* Name of the spool PersistentVolumeClaim. */}}
{{- define "radnode.spoolClaim" -}}
{{- default (printf "%s-spool" (include "radnode.fullname" .)) .Values.spool.existingClaim }}
{{- end }}

{{/* Refuse settings that cannot work. */}}
{{- define "radnode.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (hasPrefix "sqlite" .Values.database.url) }}
{{- fail "database.url: several replicas need a shared PostgreSQL database (postgresql+psycopg://...), not SQLite" }}
{{- end }}
{{- if not (regexMatch "^(sqlite|postgresql)(\\+\\w+)?://" .Values.database.url) }}
{{- fail (printf "database.url = %q: expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB" .Values.database.url) }}
{{- end }}
{{- if eq (int .Values.node.httpPort) 0 }}
{{- fail "node.httpPort: the probes use the HTTP API's /health; it must not be 0" }}
{{- end }}
{{- if or (and .Values.signing.key (not .Values.signing.cert)) (and .Values.signing.cert (not .Values.signing.key)) }}
{{- fail "signing.key and signing.cert must be given together" }}
{{- end }}
{{- end }}
