// Where an outbox keeps its messages: an asynchronous interface, so that a store may make
// blocking calls on a thread of its own (SQLite, which commits everything pending at once)
// or wait on a socket through the caller's executor (PostgreSQL through libpq's asynchronous
// API and PQsocket). Every operation completes exactly once, through its handler's
// associated executor (the store's executor when it has none), never inside the call.
//
// Leases: a lane is delivered only by the holder of its lease (owner, expiry, fencing token).
// claim takes or renews it; the token grows at every takeover; record checks it before
// writing anything, so a holder that lost its lease cannot write over the next one's work.
// A store decides when a lease may be taken over: SQLite lets one process deliver from a
// file at a time (begin_delivery locks the file for the process), so the previous holder is
// known to be gone; a shared database takes over only expired leases, lanes being claimed
// with FOR UPDATE SKIP LOCKED.
#pragma once

#include "core/lane_core.hpp"

#include <hl7/outbox/outbox.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/system/error_code.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace hl7::detail {

// What the SQL stores share: times as milliseconds since the epoch, and the states as a
// condition ("state < 2" and "state >= 3" rather than IN lists, so that partial indexes apply).
inline std::int64_t to_ms(outbox_clock::time_point t)
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

inline outbox_clock::time_point from_ms(std::int64_t ms)
{
    return outbox_clock::time_point(std::chrono::duration_cast<outbox_clock::duration>(std::chrono::milliseconds(ms)));
}

inline std::string state_condition(std::vector<outbox_state> states)
{
    std::sort(states.begin(), states.end());
    states.erase(std::unique(states.begin(), states.end()), states.end());
    if (states == std::vector{outbox_state::queued, outbox_state::written})
        return "state < 2";
    if (states == std::vector{outbox_state::rejected, outbox_state::failed})
        return "state >= 3";
    std::string in = "state IN (";
    for (std::size_t i = 0; i < states.size(); ++i) {
        if (i > 0)
            in += ',';
        in += std::to_string(static_cast<int>(states[i]));
    }
    return in + ")";
}

/// A message to store.
struct new_message {
    std::string destination;
    std::uint32_t lane = 0;
    std::string control_id;
    std::string bytes;
    outbox_clock::time_point at{};
};

struct lane_key {
    std::string destination;
    std::uint32_t lane = 0;
    friend auto operator<=>(const lane_key&, const lane_key&) = default;
};

struct lease {
    lane_key lane;
    std::string owner;
    std::uint64_t token = 0;
    outbox_clock::time_point expires{};
};

/// Which records select returns: those matching every member set, ordered by id (or, with
/// after_outcome, by outcome number), at most `limit`.
struct record_query {
    std::optional<std::int64_t> id = {};
    std::string destination = {}; ///< empty: any
    std::optional<std::string> control_id = {};
    std::optional<std::uint32_t> lane = {};
    std::vector<outbox_state> states = {}; ///< empty: any
    std::int64_t after_id = 0;
    std::optional<std::uint64_t> after_outcome = {};
    std::size_t limit = 1000;
};

/// A change another process committed to the store, that instances delivering from it act on.
struct store_change {
    enum class kind {
        queued,  ///< a message was stored in `lane`
        retried, ///< dead letters were queued again, anywhere
        outcome, ///< an outcome was recorded
        unknown, ///< anything may have changed (changes were missed, or could not be read)
    };
    kind what = kind::unknown;
    lane_key lane = {};
};

class store {
public:
    using error_code = boost::system::error_code;
    template <class Signature>
    using handler = boost::asio::any_completion_handler<Signature>;

    virtual ~store() = default;

    /// Stores a new message, or finds it already stored (same destination, MSH-10 and bytes:
    /// `duplicate`); outbox_errc::control_id_conflict when the bytes differ.
    virtual void enqueue(new_message m, handler<void(error_code, enqueue_result)> h) = 0;
    virtual void select(record_query q, handler<void(error_code, std::vector<outbox_record>)> h) = 0;
    /// The number of the last outcome recorded (0: none).
    virtual void latest_outcome(handler<void(error_code, std::uint64_t)> h) = 0;
    /// The lanes messages were ever stored in for `destination`.
    virtual void lanes(std::string destination, handler<void(error_code, std::vector<std::uint32_t>)> h) = 0;
    /// Before any claim: outbox_errc::delivery_locked when this store allows one delivering
    /// process and another one is. Counted: each call is matched by end_delivery.
    virtual void begin_delivery(handler<void(error_code)> h) = 0;
    virtual void end_delivery(handler<void(error_code)> h) = 0;
    /// Says that `owner` delivers until now + ttl (0: it stops) and gives how many owners
    /// deliver from the store, itself included: a run takes its share of the lanes.
    virtual void heartbeat(std::string owner, outbox_clock::duration ttl, handler<void(error_code, std::size_t)> h) = 0;
    /// Takes (or, for its owner, renews) the lease of `lane` until now + ttl; `now` is the
    /// caller's clock, for a store without one of its own (PostgreSQL uses the server's).
    /// outbox_errc::lease_held when another owner's lease has not expired.
    virtual void claim(lane_key lane, std::string owner, outbox_clock::duration ttl, outbox_clock::time_point now,
                       handler<void(error_code, lease)> h) = 0;
    /// Gives the lease up, if it is still this one.
    virtual void release(lease l, handler<void(error_code)> h) = 0;
    /// Applies `changes` in one transaction, in order, if `l` is still the lane's lease
    /// (outbox_errc::lease_lost otherwise, and nothing is written). A finished change takes
    /// the next outcome number.
    virtual void record(lease l, std::vector<lane_change> changes, handler<void(error_code)> h) = 0;
    /// Queues dead letters again: those among `ids`, or all with `all_dead`. Gives how many.
    virtual void retry(std::vector<std::int64_t> ids, bool all_dead, outbox_clock::time_point now,
                       handler<void(error_code, std::uint64_t)> h) = 0;
    /// Deletes final messages that became final before `before`. Gives how many.
    virtual void purge(outbox_clock::time_point before, handler<void(error_code, std::uint64_t)> h) = 0;
    virtual void status(handler<void(error_code, std::vector<outbox_lane_status>)> h) = 0;
    /// Calls `f` (on the store's executor, one call at a time) for each change another
    /// process commits, shortly after its commit: the outbox wakes a lane, or looks again,
    /// at once rather than at its next poll. Best effort: a change may be reported late or
    /// not at all (`unknown` follows a gap), so the outbox polls too. Set once, before the
    /// store is used. A store one process delivers from (SQLite) reports nothing.
    virtual void watch(std::function<void(store_change)> f) = 0;
    /// Finishes what it was given, then closes; later operations fail with outbox_errc::closed.
    virtual void close(handler<void()> h) = 0;
};

} // namespace hl7::detail
