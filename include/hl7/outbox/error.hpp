// Error codes of the outbox (category name "hl7.outbox").
//
// What the outbox itself reports: a message that conflicts with one already stored, a store
// that cannot be opened, written or trusted, and the rules of delivery (one process per
// SQLite file, a lane delivered only under its lease). Errors of the messages and of the
// connections pass through in their own categories (hl7::errc, Asio's).
#pragma once

#include <boost/system/error_code.hpp>

#include <type_traits>

namespace hl7 {

/// Errors of the outbox (category name "hl7.outbox").
enum class outbox_errc {
    /// The destination already has a message with this MSH-10 whose bytes differ: the new one
    /// is not stored. (Same MSH-10 and same bytes is not an error: enqueue says `duplicate`.)
    control_id_conflict = 1,
    /// Another process is delivering from this outbox file (SQLite allows one at a time).
    delivery_locked,
    /// The lane's lease was taken over by another instance (its fencing token changed), or it
    /// expired before this instance could renew it (paused past the lease's TTL), so this
    /// instance stopped delivering the lane; nothing was written after the takeover.
    lease_lost,
    /// This outbox is already delivering to the destination (one async_run per destination).
    already_running,
    /// No message with that outbox id, or with that destination and MSH-10.
    not_found,
    /// The number of lanes is not in 1-1024.
    invalid_lanes,
    /// The location names a PostgreSQL database (`postgresql://`, `postgres://`) and this build
    /// of the library has no PostgreSQL support (it was built without libpq).
    unsupported_location,
    /// The outbox file cannot be opened or created: its directory is missing, or access is
    /// denied.
    cannot_open,
    /// The outbox file or its directory is read-only (the database, its -wal or -shm file, or
    /// the delivery lock file cannot be written).
    read_only,
    /// The disk is full, or a file size limit was reached; the change was not stored.
    store_full,
    /// Another process held the database's write lock longer than the busy timeout.
    store_busy,
    /// The outbox file is damaged: not a database, truncated, or its pages are inconsistent.
    corrupt_store,
    /// The file is a database of something else, or of a newer version of the outbox.
    incompatible_store,
    /// Reading or writing the outbox file failed (an I/O error from the operating system).
    store_io_error,
    /// The database failed for another reason.
    store_failed,
    /// The outbox was closed.
    closed,
    /// Another instance holds the lane's lease and it has not expired (or is claiming it at
    /// this very moment): this instance does not deliver the lane for now.
    lease_held,
    /// The PostgreSQL server cannot be reached, refused the connection, or the connection was
    /// lost (the server restarted); whether the change was stored is read back from the store.
    store_unavailable,
};

/// The "hl7.outbox" category. Thread-safe; a single instance.
const boost::system::error_category& outbox_error_category() noexcept;

inline boost::system::error_code make_error_code(outbox_errc e) noexcept
{
    return {static_cast<int>(e), outbox_error_category()};
}

} // namespace hl7

template <>
struct boost::system::is_error_code_enum<hl7::outbox_errc> : std::true_type {};
