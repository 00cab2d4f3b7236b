/// The text form of a timeline, in the style of Zerver's checkout example:
///
/// ```
/// Request: POST /checkout [4bf92f35…] → 200 in 96.1ms
/// Timeline:
///     0.0ms  auth.verify        ✓ 0.15ms  (cpu)
///     0.2ms  cart.load          → kv_get(cart:u_123)
///     2.8ms  cart.load          ✓ 2.6ms   (io: kv_get)
/// ```
extension Timeline {
    public func renderText(slowEffectThresholdMs: Double = 100) -> String {
        var events: [(Int64, Int, String)] = []  // (time, order, line)
        var order = 0
        func add(_ at: Int64, _ line: String) { events.append((at, order, line)); order += 1 }
        func ms(_ ns: Int64) -> String { Self.format(ms: Double(ns) / 1_000_000) }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

        for step in steps {
            let mark = step.outcome == "threw" || step.outcome == "fail" ? "✗" : "✓"
            add(step.startNs + step.durationNs, "\(pad(step.name, 22))\(mark) \(pad(ms(step.durationNs), 9))(cpu, \(step.outcome))")
        }
        for effect in effects {
            let tail = effect.required ? "" : " [optional]"
            add(effect.startNs, "\(pad(effect.step, 22))→ \(effect.kind)(\(effect.target))\(effect.attempt > 1 ? " attempt \(effect.attempt)/\(effect.maxAttempts)" : "")\(tail)")
            switch effect.outcome {
            case "success":
                add(effect.startNs + effect.durationNs, "\(pad(effect.step, 22))✓ \(pad(ms(effect.durationNs), 9))(io: \(effect.kind), \(effect.bytesIn) B)")
            default:
                let retry = effect.attempt < effect.maxAttempts ? "retry \(effect.attempt)/\(effect.maxAttempts - 1)" : "gave up"
                add(effect.startNs + effect.durationNs, "\(pad(effect.step, 22))⚠ \(retry) (\(effect.outcome)\(effect.error.map { ": \($0)" } ?? ""))")
            }
        }
        events.sort { ($0.0, $0.1) < ($1.0, $1.1) }
        var out = "Request: \(method) \(path) [\(traceID)] → \(status) in \(ms(durationNs))\n"
        if queueWaitNs > 0 { out += "  queued \(ms(queueWaitNs)) before the first step\n" }
        out += "Timeline:\n"
        for (at, _, line) in events { out += "  \(pad(ms(at), 8)) \(line)\n" }

        // Name the slowest effect when it dominates, with its retries.
        var perStep: [String: (total: Int64, attempts: Int, outcomes: [String])] = [:]
        for effect in effects {
            var entry = perStep[effect.step] ?? (0, 0, [])
            entry.total += effect.durationNs
            entry.attempts += 1
            if effect.outcome != "success" { entry.outcomes.append(effect.outcome) }
            perStep[effect.step] = entry
        }
        if let (step, slow) = perStep.max(by: { $0.value.total < $1.value.total }), Double(slow.total) / 1e6 >= slowEffectThresholdMs {
            let why = slow.outcomes.isEmpty ? "" : " (\(Set(slow.outcomes).sorted().joined(separator: " + ")) + retry)"
            out += "\n🔴 SLOW: \(step) took \(ms(slow.total)) in \(slow.attempts) attempt\(slow.attempts == 1 ? "" : "s")\(why)\n"
        }
        return out
    }

    static func format(ms: Double) -> String {
        if ms >= 100 { return "\(Int(ms.rounded()))ms" }
        if ms >= 1 { return "\((ms * 10).rounded() / 10)ms" }
        return "\((ms * 100).rounded() / 100)ms"
    }
}
