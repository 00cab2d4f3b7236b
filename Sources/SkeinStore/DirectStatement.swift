import GRDB
import GRDBSQLite

/// A value bound straight into a prepared statement.
enum BoundValue {
    case int(Int64)
    case text(String)
    case blob([UInt8])
    case null
}

/// The group commit's hot statements, run on GRDB's prepared (cached) statements but bound and
/// stepped through SQLite's C API: building `StatementArguments` (an array of existentials,
/// each value copied into `Data`) cost more CPU per row than SQLite's own insert. Only for
/// statements inside a transaction GRDB opened, on its writer queue; the statement is reset
/// after each run, so GRDB finds it as it left it.
extension Statement {
    func run(_ values: BoundValue...) throws {
        let statement = sqliteStatement
        defer { sqlite3_reset(statement) }
        try bind(values)
        let step = sqlite3_step(statement)
        guard step == SQLITE_DONE else { throw error(step) }
    }

    /// The first row's first `count` columns as integers, or nil when there is no row.
    func integers(_ values: BoundValue..., count: Int) throws -> [Int64]? {
        let statement = sqliteStatement
        defer { sqlite3_reset(statement) }
        try bind(values)
        switch sqlite3_step(statement) {
        case SQLITE_ROW: return (0..<Int32(count)).map { sqlite3_column_int64(statement, $0) }
        case SQLITE_DONE: return nil
        case let code: throw error(code)
        }
    }

    private func bind(_ values: [BoundValue]) throws {
        let statement = sqliteStatement
        for (i, value) in values.enumerated() {
            let index = Int32(i + 1)
            let code: Int32
            switch value {
            case .int(let v): code = sqlite3_bind_int64(statement, index, v)
            case .text(let s): code = sqlite3_bind_text(statement, index, s, -1, Self.transient)
            case .blob(let bytes):
                code = bytes.withUnsafeBytes { raw in
                    // An empty blob is still a blob, not NULL.
                    raw.count == 0 ? sqlite3_bind_zeroblob(statement, index, 0)
                        : sqlite3_bind_blob(statement, index, raw.baseAddress, Int32(raw.count), Self.transient)
                }
            case .null: code = sqlite3_bind_null(statement, index)
            }
            guard code == SQLITE_OK else { throw error(code) }
        }
    }

    private func error(_ code: Int32) -> DatabaseError {
        let connection = sqlite3_db_handle(sqliteStatement)
        let message = connection.map { String(cString: sqlite3_errmsg($0)) }
        return DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: sql)
    }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
}
