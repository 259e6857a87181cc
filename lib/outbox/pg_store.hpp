// The outbox in a PostgreSQL database shared by several instances: libpq's asynchronous API
// on the caller's executor (pq_connection), a small pool of connections, the schema created
// and migrated in a schema of its own. Leases are rows of `lanes` taken with FOR UPDATE SKIP
// LOCKED and timed by the server's clock; every change a lane records locks its lease row and
// checks the fencing token in the same transaction. Enqueues, retries and outcomes NOTIFY the
// channel named after the schema in their transaction; watch LISTENs on a connection outside
// the pool, which close ends.
#pragma once

#include "outbox/store.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <chrono>

#include <cstddef>
#include <memory>
#include <string>

namespace hl7::detail {

struct pg_settings {
    std::string schema = "hl7_outbox";
    std::size_t connections = 10;
    /// A transaction of one of its sessions left idle this long is ended by the server
    /// (idle_in_transaction_session_timeout); zero leaves the server's setting.
    std::chrono::milliseconds idle_in_transaction{0};
};

/// Connects to `conninfo` (blocking, as opening an SQLite file does), creates or migrates the
/// outbox's tables in `settings.schema` and returns the store; its operations then run on a
/// strand of `ex`, and handlers without an associated executor complete on `ex`. Fails with
/// outbox_errc::store_unavailable (no server, refused), incompatible_store (the schema holds
/// something else, or a newer version), cannot_open (a schema name that is not a plain
/// identifier) or store_failed.
outcome::result<std::unique_ptr<store>> open_pg_store(boost::asio::any_io_executor ex, const std::string& conninfo,
                                                      pg_settings settings);

} // namespace hl7::detail
