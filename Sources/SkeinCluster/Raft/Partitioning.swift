/// Which partition owns a key: a stable hash (64-bit FNV-1a) of the key's UTF-8 bytes, modulo
/// the partition count. As in Redis Cluster, a key containing `{tag}` with a non-empty tag is
/// hashed by the tag alone, so related keys can share a partition.
public enum Partitioning {
    public static func hashed(_ key: String) -> Substring {
        if let open = key.firstIndex(of: "{") {
            let rest = key[key.index(after: open)...]
            if let close = rest.firstIndex(of: "}"), close > rest.startIndex {
                return rest[..<close]
            }
        }
        return key[...]
    }

    public static func partition(of key: String, count: Int) -> Int {
        precondition(count > 0)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in hashed(key).utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return Int(hash % UInt64(count))
    }
}
