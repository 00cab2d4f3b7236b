import Logging
import OTel
import ServiceLifecycle
import Tracing

/// Span export over OTLP/HTTP to an OpenTelemetry collector, through swift-otel: the tracer
/// the node hands its request, step and effect spans to, and the service that batches and
/// sends them (and flushes what is left when the node shuts down gracefully).
///
/// The standard `OTEL_*` environment variables (`OTEL_BSP_SCHEDULE_DELAY`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, …) tune it further, as the
/// OpenTelemetry specification says; swift-otel reads them.
enum SpanExport {
    static func make(endpoint: String, protocol kind: NodeSettings.OTLPProtocol, node: String, logger: Logger) throws -> (tracer: any Tracer, service: any Service) {
        var configuration = OTel.Configuration.default
        configuration.serviceName = "skein"
        configuration.resourceAttributes = ["service.instance.id": node]
        configuration.diagnosticLogger = .custom(logger)
        configuration.traces.enabled = true
        configuration.traces.exporter = .otlp
        configuration.traces.otlpExporter.endpoint = endpoint + "/v1/traces"
        configuration.traces.otlpExporter.protocol = switch kind {
        case .protobuf: .httpProtobuf
        case .json: .httpJSON
        }
        configuration.metrics.enabled = false
        configuration.logs.enabled = false
        let (tracer, service) = try OTel.makeTracingBackend(configuration: configuration)
        return (tracer, service)
    }
}

/// Collects the W3C `traceparent` a tracer writes for a span context: how the node learns the
/// trace id a tracer chose, so its own timeline and `skein-trace-id` name the same trace.
struct TraceParentInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key.lowercased()] = value
    }
}
