public import Foundation
import GRDB
public import SkeinPipeline

/// The `sql_*` effects' database: statements an application runs on this node's own SQLite.
public struct LocalSQLDatabase: SQLDatabase {
    let database: NodeDatabase

    public init(database: NodeDatabase) { self.database = database }

    public func query(_ sql: String, _ arguments: [SQLValue]) async throws -> [SQLRow] {
        try await database.pool.read { db in
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments.map(\.databaseValue)))
            return rows.map { row in
                SQLRow(columns: Array(row.columnNames), values: row.databaseValues.map(SQLValue.init))
            }
        }
    }

    public func execute(_ sql: String, _ arguments: [SQLValue]) async throws -> Int {
        try await database.pool.write { db in
            try db.execute(sql: sql, arguments: StatementArguments(arguments.map(\.databaseValue)))
            return db.changesCount
        }
    }
}

extension SQLValue {
    var databaseValue: DatabaseValue {
        switch self {
        case .null: .null
        case .integer(let v): v.databaseValue
        case .real(let v): v.databaseValue
        case .text(let v): v.databaseValue
        case .blob(let v): v.databaseValue
        }
    }

    init(_ value: DatabaseValue) {
        switch value.storage {
        case .null: self = .null
        case .int64(let v): self = .integer(v)
        case .double(let v): self = .real(v)
        case .string(let v): self = .text(v)
        case .blob(let v): self = .blob(v)
        }
    }
}
