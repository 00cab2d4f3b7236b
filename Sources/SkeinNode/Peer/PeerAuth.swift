import Crypto
import Foundation
import Synchronization

/// Proof of the cluster secret on every peer request: an HMAC-SHA256, keyed by the secret,
/// over the method, path, a timestamp, a nonce and the body, sent as
/// `skein-auth: t=<unix ms>,n=<nonce>,m=<mac>`. A request is accepted only if the MAC is
/// right, the timestamp is within `window` of this node's clock, and the same MAC was not
/// seen within the window, so a captured request cannot be replayed, later or at once.
final class PeerAuth: Sendable {
    static let header = "skein-auth"
    let window: Duration
    private let key: SymmetricKey
    private let seen = Mutex<[String: Int64]>([:])

    init(secret: String, window: Duration = .seconds(30)) {
        key = SymmetricKey(data: SHA256.hash(data: Data("skein-cluster-secret:\(secret)".utf8)))
        self.window = window
    }

    private static func message(method: String, path: String, timestamp: Int64, nonce: some StringProtocol, body: [UInt8]) -> Data {
        var data = Data("skein-peer-v1\n\(method)\n\(path)\n\(timestamp)\n\(nonce)\n".utf8)
        data.append(contentsOf: body)
        return data
    }

    func sign(method: String, path: String, body: [UInt8], now: Date = Date()) -> String {
        let timestamp = Int64(now.timeIntervalSince1970 * 1000)
        let nonce = String(UInt64.random(in: .min ... .max), radix: 16)
        let code = HMAC<SHA256>.authenticationCode(
            for: Self.message(method: method, path: path, timestamp: timestamp, nonce: nonce, body: body), using: key)
        return "t=\(timestamp),n=\(nonce),m=\(Data(code).base64EncodedString())"
    }

    /// The proof (`m=`) part of a `skein-auth` header: a long-lived stream's name in its frames' MACs.
    static func proof(ofHeader header: String) -> Substring? {
        for part in header.split(separator: ",") where part.hasPrefix("m=") { return part.dropFirst(2) }
        return nil
    }

    /// The MAC of one frame of a long-lived peer stream, keyed by the secret, over the proof
    /// that opened the stream (itself checked and never accepted twice), the frame's position in
    /// the stream and its payload: a frame cannot be forged, replayed, reordered or moved to
    /// another stream.
    func frameCode(stream: some StringProtocol, sequence: UInt64, payload: UnsafeRawBufferPointer) -> HMAC<SHA256>.MAC {
        frameKey(stream: stream).code(sequence: sequence, payload: payload)
    }

    /// The MAC state of one stream's frames, keyed and fed the stream's name once: each frame
    /// then costs only its own bytes.
    func frameKey(stream: some StringProtocol) -> FrameKey {
        var hmac = HMAC<SHA256>(key: key)
        hmac.update(data: Data("skein-frame-v1\n\(stream)\n".utf8))
        return FrameKey(base: hmac)
    }

    /// ``frameKey(stream:)``'s result. The HMAC state is a value (its digest context is copied
    /// on write), so each frame's MAC starts from the same keyed prefix.
    struct FrameKey: @unchecked Sendable {
        fileprivate let base: HMAC<SHA256>

        func code(sequence: UInt64, payload: UnsafeRawBufferPointer) -> HMAC<SHA256>.MAC {
            var hmac = base
            withUnsafeBytes(of: sequence.bigEndian) { hmac.update(data: $0) }
            hmac.update(data: payload)
            return hmac.finalize()
        }
    }

    /// nil if the request proves the secret; otherwise why not, for the log (never for the caller).
    func verify(header: String?, method: String, path: String, body: [UInt8], now: Date = Date()) -> String? {
        guard let header else { return "no \(Self.header) header" }
        var fields: [Substring: Substring] = [:]
        for part in header.split(separator: ",") {
            guard let eq = part.firstIndex(of: "=") else { return "malformed \(Self.header) header" }
            fields[part[..<eq]] = part[part.index(after: eq)...]
        }
        guard let t = fields["t"].flatMap({ Int64($0) }), let nonce = fields["n"], let m = fields["m"],
              let given = Data(base64Encoded: String(m)) else { return "malformed \(Self.header) header" }
        let nowMs = Int64(now.timeIntervalSince1970 * 1000)
        let windowMs = window.components.seconds * 1000
        guard abs(nowMs - t) <= windowMs else { return "timestamp is \(abs(nowMs - t)) ms away from this node's clock (limit \(windowMs) ms)" }
        let signed = Self.message(method: method, path: path, timestamp: t, nonce: nonce, body: body)
        guard HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: signed, using: key) else {
            return "wrong proof of the cluster secret"
        }
        let replayed: Bool = seen.withLock { seen in
            if seen.count > 10_000 || seen.count % 256 == 0 { seen = seen.filter { $0.value > nowMs - windowMs } }
            if seen[String(m)] != nil { return true }
            seen[String(m)] = t
            return false
        }
        return replayed ? "replayed request" : nil
    }
}
