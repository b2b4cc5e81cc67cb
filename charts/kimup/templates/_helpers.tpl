{{- define "kimup.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kimup.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kimup.labels" -}}
app.kubernetes.io/name: {{ include "kimup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kimup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kimup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kimup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "kimup.fullname" .) -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The chart's labels and the extra labels given as .extra (these win), as YAML. */}}
{{- define "kimup.labelsWith" -}}
{{- merge (dict) .extra (include "kimup.labels" .ctx | fromYaml) | toYaml -}}
{{- end -}}

{{- /* PromQL label matchers of this release's series, as the ServiceMonitor scrapes them. */}}
{{- define "kimup.promSelector" -}}
job="{{ include "kimup.fullname" . }}",namespace="{{ .Release.Namespace }}"
{{- end -}}
