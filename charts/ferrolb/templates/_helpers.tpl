{{/* Common labels. */}}
{{- define "ferrolb.labels" -}}
app.kubernetes.io/name: ferrolb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferrolb
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ferrolb.selector" -}}
app.kubernetes.io/name: ferrolb
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferrolb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- with .Values.image.digest }}@{{ . }}{{ end }}
{{- end -}}

{{/* Global logging flags. */}}
{{- define "ferrolb.logArgs" -}}
{{- if eq .Values.logFormat "json" }}
- --log-json
{{- else if ne .Values.logFormat "text" }}
{{- fail (printf "logFormat must be text or json, not %q" .Values.logFormat) }}
{{- end }}
- --log-level={{ .Values.logLevel }}
{{- end -}}

{{/* Lease timing flags: only the ones set. Argument: the lease values map. */}}
{{- define "ferrolb.leaseArgs" -}}
{{- with .duration }}
- --lease-duration={{ . }}
{{- end }}
{{- with .renewDeadline }}
- --renew-deadline={{ . }}
{{- end }}
{{- with .retryPeriod }}
- --retry-period={{ . }}
{{- end }}
{{- end -}}
