import Foundation
import SkeinPipeline
import Tracing

/// Turns a finished timeline into spans: the SERVER request span (already open, passed in),
/// an INTERNAL span per step, a CLIENT span per effect attempt, and events for each need.
/// Spans are made from the recorded times, so the request path pays for no tracing calls
/// while it runs.
enum TimelineSpans {
    static func emit(_ timeline: Timeline, under server: any Span, tracer: any Tracer, startNs: UInt64) {
        func at(_ offset: Int64) -> DefaultTracerClock.Instant {
            DefaultTracerClock.Instant(nanosecondsSinceEpoch: startNs &+ UInt64(max(0, offset)))
        }
        let parent = server.context
        server.attributes["http.route"] = timeline.route
        server.attributes["skein.trace_id"] = timeline.traceID
        server.attributes["skein.outcome"] = timeline.outcome
        server.attributes["http.response.status_code"] = timeline.status
        server.attributes["skein.queue_wait_ms"] = Double(timeline.queueWaitNs) / 1e6
        for need in timeline.needs {
            server.addEvent(SpanEvent(name: "skein.need_scheduled", at: at(need.startNs), attributes: [
                "need.sequence": .int64(Int64(need.sequence)), "need.effect_count": .int64(Int64(need.effectCount)),
                "need.mode": .string(need.mode.rawValue), "need.join": .string(need.join.rawValue), "need.step": .string(need.step),
            ]))
            if let continuation = need.continuation {
                server.addEvent(SpanEvent(name: "skein.step_resume", at: at(need.startNs + need.durationNs), attributes: [
                    "need.sequence": .int64(Int64(need.sequence)), "step.name": .string(continuation),
                ]))
            }
        }
        for step in timeline.steps {
            let span = tracer.startSpan("skein.step.\(step.name)", context: parent, ofKind: .internal, at: at(step.startNs))
            span.attributes["step.name"] = step.name
            span.attributes["step.layer"] = step.layer.rawValue
            span.attributes["step.sequence"] = step.sequence
            span.attributes["step.outcome"] = step.outcome
            span.attributes["step.duration_ms"] = Double(step.durationNs) / 1e6
            if step.outcome == "threw" { span.setStatus(SpanStatus(code: .error)) }
            span.end(at: at(step.startNs + step.durationNs))
        }
        for effect in timeline.effects {
            let span = tracer.startSpan("skein.effect.\(effect.kind)", context: parent, ofKind: .client, at: at(effect.startNs))
            span.attributes["effect.kind"] = effect.kind
            span.attributes["effect.target"] = effect.target
            span.attributes["effect.required"] = effect.required
            span.attributes["effect.attempt"] = effect.attempt
            span.attributes["effect.timeout_ms"] = effect.timeoutMs
            span.attributes["effect.success"] = effect.outcome == "success"
            span.attributes["effect.outcome"] = effect.outcome
            span.attributes["effect.duration_ms"] = Double(effect.durationNs) / 1e6
            span.attributes["effect.bytes"] = effect.bytesIn
            span.attributes["effect.step"] = effect.step
            if effect.outcome != "success" { span.setStatus(SpanStatus(code: .error, message: effect.error)) }
            span.end(at: at(effect.startNs + effect.durationNs))
        }
    }
}
