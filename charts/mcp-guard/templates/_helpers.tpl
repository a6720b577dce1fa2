{{/* Chart name. */}}
{{- define "mcp-guard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide prefix: the release name, or `<release>-<chart>` when it does not contain the chart name. */}}
{{- define "mcp-guard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "mcp-guard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The webhook's Deployment, Service, ServiceAccount and RBAC name. */}}
{{- define "mcp-guard.webhook" -}}
{{- printf "%s-webhook" (include "mcp-guard.fullname" .) -}}
{{- end -}}

{{/* The serving certificate's Secret. */}}
{{- define "mcp-guard.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{- .Values.certificates.secret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "mcp-guard.webhook" .) -}}
{{- end -}}
{{- end -}}

{{- define "mcp-guard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mcp-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcp-guard
{{- end -}}

{{- define "mcp-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{/* `repo:tag` or `repo@digest`; the tag defaults to the appVersion. */}}
{{- define "mcp-guard.image" -}}
{{- $img := index . 0 -}}
{{- $ctx := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The serving certificate for `selfSigned` mode, computed once per render: reused from the existing
Secret when there is one (upgrades keep the CA), else a new CA and certificate.
Returns a dict with keys crt, key, ca (base64 PEM).
*/}}
{{- define "mcp-guard.selfSignedCert" -}}
{{- $secretName := include "mcp-guard.tlsSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- if and $existing $existing.data (index $existing.data "tls.crt") (index $existing.data "tls.key") (index $existing.data "ca.crt") -}}
crt: {{ index $existing.data "tls.crt" }}
key: {{ index $existing.data "tls.key" }}
ca: {{ index $existing.data "ca.crt" }}
{{- else -}}
{{- $svc := include "mcp-guard.webhook" . -}}
{{- $ns := .Release.Namespace -}}
{{- $days := int .Values.certificates.selfSigned.validityDays -}}
{{- $ca := genCA (printf "%s-ca" $svc) $days -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns $days $ca -}}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
ca: {{ $ca.Cert | b64enc }}
{{- end -}}
{{- end -}}
