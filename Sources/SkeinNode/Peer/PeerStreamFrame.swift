import Crypto
import NIOCore

/// The framing of a long-lived peer stream (Raft's): each frame is a 4-byte big-endian payload
/// length, the payload's 32-byte MAC (``PeerAuth/frameCode(stream:sequence:payload:)``) and the
/// payload. The stream's opening request proves the secret like any peer request; every frame
/// proves it again, bound to that stream and its place in it.
enum PeerStreamFrame {
    static let macSize = 32

    struct Refused: Error, CustomStringConvertible {
        let description: String
    }

    static func encode(_ payload: [UInt8], sequence: UInt64, stream: some StringProtocol, auth: PeerAuth) -> ByteBuffer {
        encode(payload, sequence: sequence, key: auth.frameKey(stream: stream))
    }

    static func encode(_ payload: [UInt8], sequence: UInt64, key: PeerAuth.FrameKey) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(4 + macSize + payload.count)
        buffer.writeInteger(UInt32(payload.count))
        let code = payload.withUnsafeBytes { key.code(sequence: sequence, payload: $0) }
        code.withUnsafeBytes { _ = buffer.writeBytes($0) }
        buffer.writeBytes(payload)
        return buffer
    }

    /// Takes the next whole frame off `buffer` and returns its payload; nil while `buffer` holds
    /// no whole frame yet. Throws on a frame over `limit` or with a wrong MAC.
    static func next(from buffer: inout ByteBuffer, sequence: UInt64, stream: some StringProtocol, auth: PeerAuth, limit: Int) throws -> [UInt8]? {
        try next(from: &buffer, sequence: sequence, key: auth.frameKey(stream: stream), limit: limit)
    }

    static func next(from buffer: inout ByteBuffer, sequence: UInt64, key: PeerAuth.FrameKey, limit: Int) throws -> [UInt8]? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard Int(length) <= limit else { throw Refused(description: "a frame of \(length) bytes exceeds \(limit)") }
        guard buffer.readableBytes >= 4 + macSize + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let given = buffer.readBytes(length: macSize)!
        let payload = buffer.readBytes(length: Int(length))!
        let code = payload.withUnsafeBytes { key.code(sequence: sequence, payload: $0) }
        guard code == given else { throw Refused(description: "frame \(sequence) does not prove the cluster secret") }
        if buffer.readableBytes == 0 { buffer.clear() } else if buffer.readerIndex > 1 << 16 { buffer.discardReadBytes() }
        return payload
    }
}
