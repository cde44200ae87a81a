{{/* Name of every object. */}}
{{- define "chokepoint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The namespace the agent runs in. */}}
{{- define "chokepoint.namespace" -}}
{{- .Values.namespace.name -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "chokepoint.labels" -}}
app.kubernetes.io/name: {{ include "chokepoint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The pods' selector. */}}
{{- define "chokepoint.selector" -}}
app.kubernetes.io/name: {{ include "chokepoint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The metrics listen address. */}}
{{- define "chokepoint.metricsAddr" -}}
{{- if .Values.metrics.expose -}}
0.0.0.0:{{ .Values.metrics.port }}
{{- else -}}
127.0.0.1:{{ .Values.metrics.port }}
{{- end -}}
{{- end -}}
