// The outbox in one SQLite file (WAL), with a thread of its own that makes the blocking
// calls: every operation waiting when it finishes a transaction goes into the next one
// (group commit), each inside a savepoint so that one that fails leaves the others alone.
#pragma once

#include "outbox/store.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace hl7::detail {

struct sqlite_settings {
    outbox_synchronous synchronous = outbox_synchronous::full;
    std::chrono::milliseconds busy_timeout = std::chrono::seconds(5);
    /// Told of each group commit (outbox_event::kind::committing), on the store's thread.
    std::function<void(const outbox_event&)> observer = {};
};

/// Opens (creating if missing) the outbox file at `path` and starts its thread. Handlers
/// without an associated executor complete on `ex`. Fails with outbox_errc::cannot_open,
/// read_only, corrupt_store, incompatible_store, store_busy, store_io_error, store_full or
/// store_failed.
outcome::result<std::unique_ptr<store>> open_sqlite_store(boost::asio::any_io_executor ex, const std::string& path,
                                                          sqlite_settings settings);

} // namespace hl7::detail
