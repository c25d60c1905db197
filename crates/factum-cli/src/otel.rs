//! Spans over OTLP when the standard OpenTelemetry variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; HTTP with protobuf,
//! the protocol's default; `OTEL_SERVICE_NAME` names the service, `factum` when unset). Without
//! them nothing is exported and nothing extra runs.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The variables that switch the export on.
const ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// A tracer provider exporting over OTLP, when the environment asks for one.
pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, String> {
    let asked = ENDPOINTS
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    if !asked {
        return Ok(None);
    }
    for name in ENDPOINTS {
        if let Ok(value) = std::env::var(name)
            && !value.trim().is_empty()
        {
            let url = reqwest::Url::parse(value.trim())
                .map_err(|e| format!("{name}={value:?} is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "{name}={value:?}: OTLP over HTTP needs an http:// or https:// URL"
                ));
            }
        }
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("OTLP exporter ({}): {e}", ENDPOINTS.join(" / ")))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "factum".into());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    ))
}
