{{/* Labels every object of this chart carries. */}}
{{- define "kubelet-py.labels" -}}
app.kubernetes.io/name: kubelet-py
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
