/// How an effect is retried: attempts in all, and an exponential backoff between them.
public struct RetryPolicy: Sendable, Equatable, Codable {
    /// Attempts in all, the first included (1 means no retry).
    public var maxAttempts: Int
    public var initialBackoff: Duration
    public var multiplier: Double
    public var maxBackoff: Duration
    /// The fraction (0…1) of each backoff that is randomized: 0.2 means ±20 %.
    public var jitter: Double

    public init(maxAttempts: Int, initialBackoff: Duration = .milliseconds(10), multiplier: Double = 1.5,
                maxBackoff: Duration = .seconds(5), jitter: Double = 0) {
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = initialBackoff
        self.multiplier = multiplier
        self.maxBackoff = maxBackoff
        self.jitter = min(1, max(0, jitter))
    }

    /// One attempt, no retry.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The wait before attempt `attempt + 1` after attempt `attempt` (counted from 1) failed, or
    /// nil when no attempt is left. `random` is a number in [0, 1) supplied by the caller, so this
    /// stays a pure function.
    public func backoff(afterAttempt attempt: Int, random: Double) -> Duration? {
        guard attempt < maxAttempts else { return nil }
        let base = Double(initialBackoff.nanoseconds) * pow(multiplier, Double(attempt - 1))
        let capped = min(base, Double(maxBackoff.nanoseconds))
        let factor = 1 + jitter * (2 * random - 1)
        return .nanoseconds(Int64(max(0, capped * factor)))
    }
}

extension Duration {
    /// The duration in whole nanoseconds.
    public var nanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }

    /// The duration in milliseconds, fractional.
    public var milliseconds: Double { Double(nanoseconds) / 1_000_000 }
}

import Foundation
