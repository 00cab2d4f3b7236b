/// CRC-32C (Castagnoli), the checksum of a snapshot chunk on the wire: it catches what a
/// connection or a buggy peer garbles, which TCP's 16-bit sum lets through now and then.
/// (No package on hand computes it; swift-crypto has only cryptographic digests, which cost
/// far more per byte than a table-driven CRC.)
public enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 == 1 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { crc = t[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        }
        return ~crc
    }
}
