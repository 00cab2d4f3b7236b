import SkeinPipeline
import Testing

@Suite struct RetryPolicyTests {
    @Test func exponentialBackoffIsCappedAndEndsWithTheAttempts() {
        let policy = RetryPolicy(maxAttempts: 5, initialBackoff: .milliseconds(10), multiplier: 2, maxBackoff: .milliseconds(50))
        #expect(policy.backoff(afterAttempt: 1, random: 0.5) == .milliseconds(10))
        #expect(policy.backoff(afterAttempt: 2, random: 0.5) == .milliseconds(20))
        #expect(policy.backoff(afterAttempt: 3, random: 0.5) == .milliseconds(40))
        #expect(policy.backoff(afterAttempt: 4, random: 0.5) == .milliseconds(50))
        #expect(policy.backoff(afterAttempt: 5, random: 0.5) == nil)
        #expect(RetryPolicy.none.backoff(afterAttempt: 1, random: 0.5) == nil)
    }

    @Test func jitterStaysWithinItsFraction() {
        let policy = RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(100), multiplier: 1, jitter: 0.2)
        #expect(policy.backoff(afterAttempt: 1, random: 0) == .milliseconds(80))
        #expect(policy.backoff(afterAttempt: 1, random: 0.5) == .milliseconds(100))
        let high = policy.backoff(afterAttempt: 1, random: 0.999_999)!
        #expect(high > .milliseconds(119) && high <= .milliseconds(120))
    }

    @Test func attemptsAreAtLeastOne() {
        #expect(RetryPolicy(maxAttempts: 0).maxAttempts == 1)
    }
}
