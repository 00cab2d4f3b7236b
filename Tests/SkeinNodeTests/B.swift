import Testing; import HummingbirdTesting; import InMemoryTracing; @Test func b() {}
