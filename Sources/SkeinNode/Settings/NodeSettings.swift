import Configuration
import Foundation
import Logging
import SystemPackage

/// Every setting of a node. Each has one name used three ways: a flag (`--max-body-size`), an
/// environment variable (`SKEIN_MAX_BODY_SIZE`) and a key of the `--config` JSON file
/// (`"maxBodySize"`). Flags win over the environment, which wins over the file.
public struct NodeSettings: Sendable, Equatable {
    public var name: String = "n1"
    public var listen: HostPort = HostPort(host: "127.0.0.1", port: 8080)
    public var peer: HostPort = HostPort(host: "127.0.0.1", port: 7946)
    public var seeds: [HostPort] = []
    public var data: String = "./skein-data"
    public var clusterSecret: String?
    public var maxBodySize: Int = 1 << 20
    public var slowRequestMs: Double = 500
    public var traceBuffer: Int = 1024
    public var logLevel: Logger.Level = .info
    public var computeThreads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// SwiftNIO event-loop threads of this node's own; nil: SwiftNIO's shared group (one loop
    /// per core, or `NIO_SINGLETON_GROUP_LOOP_COUNT`).
    public var eventLoops: Int?
    public var partitions: Int = 16
    /// A partition's log is compacted once it holds more entries than this, or more bytes
    /// of entries than ``logCompactBytes`` (the state machine stands in for them; a follower
    /// that needs them gets a snapshot).
    public var logCompactEntries: Int = 20_000
    public var logCompactBytes: Int = 64 << 20
    /// The OpenTelemetry collector's base URL (spans go to `<url>/v1/traces`); nil: no export.
    public var otlpEndpoint: String?
    public var otlpProtocol: OTLPProtocol = .protobuf

    /// How spans are encoded for the collector: OTLP/HTTP with protobuf or JSON bodies.
    public enum OTLPProtocol: String, Sendable, CaseIterable {
        case protobuf = "http/protobuf"
        case json = "http/json"
    }

    public init() {}

    /// The settings, their kinds and what they mean, as `--help` and the README list them.
    public static let documentation: [(key: String, kind: String, help: String)] = [
        ("name", "NAME", "this node's name in the cluster (default n1)"),
        ("listen", "HOST:PORT", "client port, HTTP/1.1 and h2c (default 127.0.0.1:8080)"),
        ("peer", "HOST:PORT", "peer port for node-to-node traffic (default 127.0.0.1:7946)"),
        ("seeds", "HOST:PORT,…", "peer addresses of the seed nodes; this node's own may be among them"),
        ("data", "DIR", "data directory (default ./skein-data)"),
        ("clusterSecret", "SECRET", "shared secret every peer request proves"),
        ("maxBodySize", "BYTES", "largest request body accepted, else 413 (default 1048576)"),
        ("slowRequestMs", "MS", "requests slower than this print their timeline to the log (default 500)"),
        ("traceBuffer", "N", "timelines of recent requests kept for GET /v1/traces/{id} (default 1024)"),
        ("logLevel", "LEVEL", "trace, debug, info, notice, warning, error or critical (default info)"),
        ("computeThreads", "N", "threads running compute effects (default: the number of cores)"),
        ("eventLoops", "N", "event-loop threads serving the client and peer ports and replication (default: the number of cores); nodes sharing a machine do better with their share of its cores each"),
        ("partitions", "N", "partitions of the replicated log, fixed when the cluster is created (default 16)"),
        ("logCompactEntries", "N", "compact a partition's log once it holds more entries than this (default 20000)"),
        ("logCompactBytes", "BYTES", "compact a partition's log once its entries hold more bytes than this (default 67108864)"),
        ("otlpEndpoint", "URL", "OpenTelemetry collector to export spans to over OTLP/HTTP, e.g. http://127.0.0.1:4318 (spans go to <URL>/v1/traces; default: no export)"),
        ("otlpProtocol", "PROTOCOL", "http/protobuf or http/json (default http/protobuf)"),
    ]

    /// `maxBodySize` → `max-body-size`.
    public static func flagName(_ key: String) -> String {
        var out = ""
        for c in key {
            if c.isUppercase { out += "-" + c.lowercased() } else { out.append(c) }
        }
        return out
    }

    /// `maxBodySize` → `SKEIN_MAX_BODY_SIZE`.
    public static func environmentName(_ key: String) -> String {
        "SKEIN_" + flagName(key).uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// Reads settings from flags (already parsed, by key), the environment, and an optional
    /// JSON file. Errors name the setting, where it came from, and what is expected.
    public static func load(
        flags: [String: String], configFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws(SettingsError) -> NodeSettings {
        var providers: [any ConfigProvider] = [
            InMemoryProvider(name: "flags", values: flags.reduce(into: [:]) { values, pair in
                values[AbsoluteConfigKey(pair.key.split(separator: ".").map(String.init))] = ConfigValue(.string(pair.value), isSecret: pair.key == "clusterSecret")
            }),
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .specific(["SKEIN_CLUSTER_SECRET"])
            ).prefixKeys(with: "skein"),
        ]
        if let configFile {
            do {
                providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(configFile)))
            } catch {
                throw SettingsError(setting: "config", message: "cannot read config file \(configFile): \(error)")
            }
        }
        let reader = ConfigReader(providers: providers)
        var settings = NodeSettings()
        func string(_ key: String) -> String? {
            reader.string(forKey: ConfigKey(key), isSecret: key == "clusterSecret")
        }
        func number(_ key: String) throws(SettingsError) -> Double? {
            guard let raw = string(key) else { return nil }
            guard let value = Double(raw), value >= 0 else {
                throw SettingsError(setting: key, message: "\(describe(key)) must be a non-negative number, not '\(raw)'")
            }
            return value
        }
        func integer(_ key: String, min: Int) throws(SettingsError) -> Int? {
            guard let raw = string(key) else { return nil }
            guard let value = Int(raw), value >= min else {
                throw SettingsError(setting: key, message: "\(describe(key)) must be an integer of at least \(min), not '\(raw)'")
            }
            return value
        }
        if let v = string("name") {
            guard !v.isEmpty, v.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) else {
                throw SettingsError(setting: "name", message: "\(describe("name")) must be letters, digits, '-', '_' or '.', not '\(v)'")
            }
            settings.name = v
        }
        if let v = string("listen") { settings.listen = try HostPort.parse(v, setting: "listen") }
        if let v = string("peer") { settings.peer = try HostPort.parse(v, setting: "peer") }
        if let v = string("seeds") {
            var seeds: [HostPort] = []
            for part in v.split(separator: ",") where !part.trimmingCharacters(in: .whitespaces).isEmpty {
                seeds.append(try HostPort.parse(part.trimmingCharacters(in: .whitespaces), setting: "seeds"))
            }
            settings.seeds = seeds
        }
        if let v = string("data") {
            guard !v.isEmpty else { throw SettingsError(setting: "data", message: "\(describe("data")) cannot be empty") }
            settings.data = v
        }
        if let v = string("clusterSecret"), !v.isEmpty { settings.clusterSecret = v }
        if let v = try integer("maxBodySize", min: 1) { settings.maxBodySize = v }
        if let v = try number("slowRequestMs") { settings.slowRequestMs = v }
        if let v = try integer("traceBuffer", min: 1) { settings.traceBuffer = v }
        if let v = try integer("computeThreads", min: 1) { settings.computeThreads = v }
        if let v = try integer("eventLoops", min: 1) {
            guard v <= 256 else { throw SettingsError(setting: "eventLoops", message: "\(describe("eventLoops")) is at most 256, not \(v)") }
            settings.eventLoops = v
        }
        if let v = try integer("partitions", min: 1) {
            guard v <= 4096 else { throw SettingsError(setting: "partitions", message: "\(describe("partitions")) is at most 4096, not \(v)") }
            settings.partitions = v
        }
        if let v = try integer("logCompactEntries", min: 10) { settings.logCompactEntries = v }
        if let v = try integer("logCompactBytes", min: 1 << 16) { settings.logCompactBytes = v }
        if let v = string("otlpEndpoint"), !v.isEmpty {
            guard let url = URL(string: v), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host?.isEmpty == false else {
                throw SettingsError(setting: "otlpEndpoint", message: "\(describe("otlpEndpoint")) must be an http:// or https:// URL, not '\(v)'")
            }
            settings.otlpEndpoint = v.hasSuffix("/") ? String(v.dropLast()) : v
        }
        if let v = string("otlpProtocol") {
            guard let p = OTLPProtocol(rawValue: v.lowercased()) else {
                throw SettingsError(setting: "otlpProtocol", message: "\(describe("otlpProtocol")) must be http/protobuf or http/json, not '\(v)'")
            }
            settings.otlpProtocol = p
        }
        if let v = string("logLevel") {
            guard let level = Logger.Level(rawValue: v.lowercased()) else {
                throw SettingsError(setting: "logLevel", message: "\(describe("logLevel")) must be one of trace, debug, info, notice, warning, error, critical, not '\(v)'")
            }
            settings.logLevel = level
        }
        return settings
    }

    static func describe(_ key: String) -> String {
        "--\(flagName(key)) (\(environmentName(key)), config key \"\(key)\")"
    }
}

/// A `host:port` address.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func parse(_ text: String, setting: String) throws(SettingsError) -> HostPort {
        let bad = SettingsError(setting: setting, message: "\(NodeSettings.describe(setting)): '\(text)' is not HOST:PORT (port 0–65535)")
        guard let colon = text.lastIndex(of: ":") else { throw bad }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { throw bad }
        return HostPort(host: host, port: port)
    }
}

/// A setting that cannot be used, with the sentence to print.
public struct SettingsError: Error, Sendable, CustomStringConvertible {
    public let setting: String
    public let message: String
    public var description: String { message }
}
