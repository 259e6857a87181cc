// The outbox: durable store-and-forward in front of connections.
//
//     auto box = hl7::outbox::open(ex, {.location = "/var/lib/adt/outbox.db"}).value();
//     const hl7::outbox_destination adt{.host = "hl7.example.org", .port = 5678};
//     auto queued = co_await box.enqueue(adt, std::move(msg));      // durable when it returns
//     box.async_run(adt, {}, asio::detached);                        // delivers, lane by lane
//     auto done = co_await box.next_outcome(cursor);                 // ACKs, even across restarts
//     cursor = done.value().outcome;
//
// What the outbox guarantees:
//   - A message is stored before enqueue completes (committed to the file; with the default
//     outbox_synchronous::full the commit survives power loss too). It stays until it is
//     purged, whatever happens to the process.
//   - At-least-once delivery. Each message moves queued -> written -> acknowledged (AA, CA),
//     rejected (AE, AR, CE, CR) or failed, each step committed. `written` is committed before
//     the message is handed to its connection, so a message that may have reached the peer is
//     always known: when it is sent again (after a crash, an ACK timeout or a lost link) it is
//     sent with the same bytes and MSH-10 and its record says possible_duplicate. That is the
//     only way a message can arrive twice, and every such message is flagged. (A flag can also
//     be set on a message that never reached the peer: a crash between the commit and the
//     write over-flags; it never under-flags.)
//   - Order per lane: a lane sends one message at a time and the next only once the previous
//     one is final; a message being retried holds its lane up.
//   - Enqueuing is idempotent per destination and MSH-10: the same message again is not
//     stored twice (enqueue_result::duplicate), a different message with the same MSH-10 is
//     refused (outbox_errc::control_id_conflict).
//   - Memory does not grow with the queue: a lane reads the next few messages from the store.
//
// Delivery: a destination (host and port) has one or more lanes, chosen per message when it
// is enqueued (enqueue_options: a partition key and a number of lanes). async_run delivers
// every lane of a destination, each over a connection of its own, while it holds that lane's
// lease (an owner, an expiry and a fencing token that grows at every takeover, checked by
// every state change it writes). On an SQLite file one process delivers at a time: the
// first run takes a lock on `<file>.lock`, and a run in another process fails with
// outbox_errc::delivery_locked. Other processes may enqueue, read and administer meanwhile.
//
// PostgreSQL (a `postgresql://` or `postgres://` location): several instances, in several
// processes or machines, run the same destination from one database. Each run takes its
// share of the destination's lanes (lanes / the instances that heartbeat in the database),
// each lane under its lease, renewed every third of outbox_options::lease_ttl and timed by
// the server's clock. The lanes of an instance that dies are taken over once their leases
// expire; its written-but-unacknowledged messages are sent again, flagged possible_duplicate.
// An instance paused past its lease (SIGSTOP, a frozen VM) finds, when it wakes, that its
// lease was taken over or has expired: it sends nothing more and writes nothing (every change
// checks the fencing token in its transaction). A lost connection to the server stops the
// lanes it served, which start again, on new connections with backoff, at a later poll.
// Enqueues, retries and outcomes send a NOTIFY (on the channel named after the schema) when
// they commit; each instance LISTENs on one connection of its own and wakes the lane a message
// was stored in (or looks for new lanes to take, or queries for its outcome waiters) within
// milliseconds. Polling stays as the fallback: a lost listening connection is made again with
// backoff, after which every run and waiter looks again, and until then polls cover it.
//
// SQLite: the file uses WAL (concurrent readers, one writer), so it must be on a local
// filesystem, not a network share. Concurrent operations share commits (group commit): one
// thread of the outbox's own makes the blocking calls and commits every pending change at
// once, so many producers cost one sync of the disk per batch rather than one per message.
#pragma once

#include <hl7/error.hpp>
#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>
#include <hl7/net/client.hpp>
#include <hl7/outbox/error.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/deferred.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7 {

/// The clock of the outbox's records: wall time, since records outlive processes.
using outbox_clock = std::chrono::system_clock;

/// Where an outbox lives.
struct outbox_location {
    enum class kind {
        sqlite,     ///< an SQLite file, created if missing
        postgresql, ///< a PostgreSQL database (a libpq connection URI)
    };
    kind what = kind::sqlite;
    /// The file's path, or the URL.
    std::string target = {};
};

/// Reads an outbox location: a URL that starts with `postgresql://` or `postgres://` names a
/// PostgreSQL database; anything else is the path of an SQLite file. The one place where
/// this is decided. Thread safety: pure function.
outbox_location parse_outbox_location(std::string_view text);

/// How hard an SQLite commit pushes the data to the disk (PRAGMA synchronous, in WAL mode).
enum class outbox_synchronous {
    /// Every commit syncs the write-ahead log: a commit survives a crash of the process and a
    /// loss of power. The default: an outbox exists to not lose messages, and group commit
    /// spreads the cost of each sync over every change committed with it.
    full,
    /// Commits are not synced; the log is synced at checkpoints. A commit survives a crash of
    /// the process (kill -9), but the last commits may be lost, never corrupted, when the
    /// machine loses power.
    normal,
};

/// The life of a message in the outbox.
enum class outbox_state {
    queued,       ///< stored, not handed to a connection (or handed and certainly not written)
    written,      ///< handed to the connection, no outcome yet: the ambiguous window
    acknowledged, ///< final: AA or CA
    rejected,     ///< final, a dead letter: AE, AR, CE or CR (MSA-3/ERR text in `error`)
    failed,       ///< final, a dead letter: the retry policy gave up, or it cannot be sent
};

/// "queued", "written", "acknowledged", "rejected" or "failed".
std::string_view to_string(outbox_state s) noexcept;
/// The state spelled by `text`, or nullopt.
std::optional<outbox_state> parse_outbox_state(std::string_view text) noexcept;
/// Acknowledged, rejected or failed.
constexpr bool is_final(outbox_state s) noexcept { return s >= outbox_state::acknowledged; }
/// Rejected or failed: what retry and the dead-letter listing take.
constexpr bool is_dead(outbox_state s) noexcept { return s >= outbox_state::rejected; }

/// Where messages go: one host and port.
struct outbox_destination {
    std::string host = {}; ///< IPv4 address, IPv6 address (brackets optional) or DNS name
    std::uint16_t port = 0;
};

/// The destination as the outbox stores it: `host:port`, an IPv6 address in brackets.
std::string to_string(const outbox_destination& d);

/// Everything the outbox knows of a message.
struct outbox_record {
    std::int64_t id = 0;              ///< the outbox id: grows with each message stored, never reused
    std::string destination = {};     ///< `host:port`
    std::uint32_t lane = 0;           ///< 0 to lanes-1
    std::string control_id = {};      ///< MSH-10
    outbox_state state = outbox_state::queued;
    bool possible_duplicate = false;  ///< a sending after one that may have reached the peer
    std::uint32_t attempts = 0;       ///< times handed to a connection
    outbox_clock::time_point enqueued_at{};
    outbox_clock::time_point queued_at{}; ///< at enqueue, and again at each retry of a dead letter
    std::optional<outbox_clock::time_point> written_at = {};  ///< the last time it was handed over
    std::optional<outbox_clock::time_point> finished_at = {}; ///< when it became final
    std::optional<hl7::ack_code> code = {}; ///< MSA-1 of the acknowledgement, when one came
    std::string ack = {};                  ///< the acknowledgement's bytes; empty when none
    std::chrono::microseconds round_trip{}; ///< of the acknowledged sending
    /// Rejected: the peer's text (hl7::ack::explanation, else the code's meaning). Failed:
    /// why it gave up. Otherwise the last failure, if any.
    std::string error = {};
    /// Its place in the stream of outcomes (see outbox::async_next_outcome); 0 until final.
    std::uint64_t outcome = 0;
    std::string message = {}; ///< the message's bytes, as enqueued
};

/// How a message is given a lane.
struct enqueue_options {
    /// A path (`PID.3.1`) whose wire text picks the lane: FNV-1a 64 of those bytes, modulo
    /// `lanes`. Messages with the same value share a lane, so their order is kept; an absent
    /// value counts as empty text. Empty: lane 0.
    std::string partition_key = {};
    /// Lanes of the destination, 1-1024. Use the same number for every message of a
    /// destination: changing it while messages are pending breaks the order of a key whose
    /// lane changes.
    std::uint32_t lanes = 1;
};

/// The lane `msg` goes to under `options` (what enqueue uses). Fails with errc::invalid_path
/// for a malformed partition key, outbox_errc::invalid_lanes outside 1-1024.
/// Thread safety: pure function.
outcome::result<std::uint32_t> outbox_lane(const message& msg, const enqueue_options& options);

/// What enqueue stored.
struct enqueue_result {
    std::int64_t id = 0;
    std::uint32_t lane = 0;
    /// Of the stored message: queued for a new one; for a duplicate, whatever it is now.
    outbox_state state = outbox_state::queued;
    /// The destination already had this message (same MSH-10, same bytes); nothing was stored.
    bool duplicate = false;
};

/// What a lane does when a sending fails. A NACK (AE, AR, CE, CR) is final: the message is
/// recorded rejected and the lane goes on. A message that cannot be sent at all (its bytes
/// hold an MLLP block byte, it exceeds the connection's size limit, a send hook threw) is
/// recorded failed at once. Any other failure (no connection, an ACK timeout, a lost link, a
/// reply that is not its ACK) is retried after a backoff, by default without end: the store
/// holds the message. The delay before try n+1 is min(max, initial * factor^(n-1)), spread
/// by +-jitter (a fraction of it).
struct outbox_retry_policy {
    std::chrono::milliseconds initial = std::chrono::seconds(1);
    std::chrono::milliseconds max = std::chrono::seconds(60);
    double factor = 2.0;  ///< at least 1
    double jitter = 0.2;  ///< in [0, 1]; 0 disables jitter
    /// After this many attempts a failing message is recorded failed (a dead letter); 0 never.
    std::uint32_t max_attempts = 0;
    /// A failing message queued longer than this (since enqueue or its last retry) is recorded
    /// failed; 0 never.
    std::chrono::milliseconds max_age{0};
};

/// How async_run delivers.
struct outbox_run_options {
    /// For each lane's connection; a connection that gives up (reconnect.max_attempts) is
    /// started again after the retry policy's delay. Its max_in_flight is the lane's window:
    /// up to that many of the lane's messages are written before their ACKs, in order; on a
    /// failure the later ones are withdrawn or, if written, left in the written state (flagged
    /// when sent again), and the lane resumes from its earliest message that is not final.
    connection_options connection = {};
    outbox_retry_policy retry = {};
    /// Complete once nothing is pending for the destination (every message final), instead of
    /// running until cancelled.
    bool until_empty = false;
};

/// Counts and lease of one lane, from outbox::async_status.
struct outbox_lane_status {
    std::string destination = {};
    std::uint32_t lane = 0;
    std::uint64_t queued = 0, written = 0, acknowledged = 0, rejected = 0, failed = 0;
    std::uint64_t possible_duplicates = 0; ///< messages flagged, in any state
    /// When the oldest message still pending (queued or written) was queued.
    std::optional<outbox_clock::time_point> oldest_pending = {};
    std::string lease_owner = {}; ///< who delivers it (empty: nobody holds the lease)
    std::optional<outbox_clock::time_point> lease_expires = {};
    std::uint64_t lease_token = 0; ///< the fencing token of the last holder
};

/// Which records async_list returns, ordered by outbox id.
struct outbox_filter {
    std::vector<outbox_state> states = {}; ///< empty: any
    std::string destination = {};          ///< `host:port`; empty: any
    std::int64_t after_id = 0;             ///< ids greater than this (to page through)
    std::size_t limit = 1000;              ///< at most this many
};

/// Something the outbox did, for logs and metrics (outbox_options::observer). Views are valid
/// only during the call.
struct outbox_event {
    enum class kind {
        committing,      ///< a group commit of `count` changes is about to be made durable
        lane_started,    ///< this instance holds the lease of `lane` (token `token`) and delivers it
        written,         ///< `id` was recorded written and is handed to the connection
        outcome,         ///< `id` was recorded final in `state`
        retry_scheduled, ///< `id` failed with `error` after `attempts` attempts; next try after `delay`
        lane_stopped,    ///< this instance stopped delivering `lane`; `error` unless it was asked to
    };
    kind what = kind::committing;
    std::string_view destination = {};
    std::uint32_t lane = 0;
    std::int64_t id = 0;
    std::string_view control_id = {};
    outbox_state state = outbox_state::queued;
    bool possible_duplicate = false;
    std::uint32_t attempts = 0;
    boost::system::error_code error = {};
    std::chrono::milliseconds delay{};
    std::size_t count = 0;
    std::uint64_t token = 0;
};

/// How an outbox is opened.
struct outbox_options {
    /// Where it lives (see parse_outbox_location).
    std::string location = {};
    /// SQLite: how commits reach the disk.
    outbox_synchronous synchronous = outbox_synchronous::full;
    /// SQLite: how long a commit waits for another process's write to finish before it fails
    /// with outbox_errc::store_busy.
    std::chrono::milliseconds busy_timeout = std::chrono::seconds(5);
    /// How often runs and async_next_outcome look for what other processes stored (new
    /// messages, retried dead letters, outcomes), and runs for lanes to take (free, expired,
    /// or their share as instances come and go). What this instance stores wakes it at once;
    /// on PostgreSQL, so does what other instances store (LISTEN/NOTIFY), and polling is the
    /// fallback for a notification missed while the listening connection was down.
    std::chrono::milliseconds poll_interval = std::chrono::seconds(1);
    /// How long a lane's lease lasts; it is renewed every third of that while the lane works.
    /// The lanes of an instance that died are taken over within lease_ttl + poll_interval.
    /// On PostgreSQL, so are those of an instance that is stopped (SIGSTOP, a paused VM) in
    /// the middle of a transaction: its sessions end a transaction left idle for lease_ttl
    /// (idle_in_transaction_session_timeout), which frees the rows it had locked; once it runs
    /// again it finds its connections closed and reconnects, its leases gone.
    std::chrono::milliseconds lease_ttl = std::chrono::seconds(30);
    /// PostgreSQL: the schema of the outbox's tables, created (and migrated) if need be; a
    /// plain lower-case identifier. Instances that share messages use the same schema.
    std::string schema = "hl7_outbox";
    /// PostgreSQL: at most this many connections to the server (a delivering lane uses one
    /// at a time for its records, enqueues and queries share the others).
    std::size_t connections = 10;
    /// Told what the outbox does. Called on a lane's strand, except `committing`, which is
    /// called on the store's thread. It must not block (what it blocks is held up).
    std::function<void(const outbox_event&)> observer = {};
};

/// A durable outbox (see the top of this header).
///
/// Every operation completes exactly once, with its result or a named error: errors of the
/// store in the hl7.outbox category (store_full, read_only, corrupt_store, ...), closed once
/// the outbox is closed. None throws for an expected failure.
///
/// Thread safety: the object is a handle to shared state; all member functions may be called
/// from any thread, concurrently. Completion handlers run on their associated executor (by
/// default the outbox's), never inside the initiating call.
///
/// Cancellation: only async_run and async_next_outcome can be cancelled (per-operation, any
/// cancellation type); the others are short and always complete.
///
/// Lifetime: move-only. Destroying the last handle closes the outbox as async_close does,
/// without waiting; operations already started still complete. The executor's execution
/// context must outlive them.
class outbox {
public:
    using executor_type = boost::asio::any_io_executor;
    using enqueue_signature = void(boost::system::error_code, enqueue_result);
    using run_signature = void(boost::system::error_code);
    using record_signature = void(boost::system::error_code, outbox_record);
    using records_signature = void(boost::system::error_code, std::vector<outbox_record>);
    using status_signature = void(boost::system::error_code, std::vector<outbox_lane_status>);
    using count_signature = void(boost::system::error_code, std::uint64_t);

    /// Opens (creating if missing) the outbox at options.location, checks it and starts its
    /// store. Blocks while it opens the file, or connects to PostgreSQL and prepares the schema.
    /// Fails with outbox_errc::unsupported_location, cannot_open, read_only, corrupt_store,
    /// incompatible_store, store_busy, store_io_error, store_unavailable.
    static outcome::result<outbox> open(executor_type ex, outbox_options options);

    outbox(outbox&&) noexcept;
    outbox& operator=(outbox&&) noexcept;
    ~outbox();

    /// Stores `msg` for `to`, in the lane `options` choose (see outbox_lane), and completes
    /// once it is committed; a run delivering `to` in this process is woken at once.
    /// Completion signature void(error_code, enqueue_result). Fails, storing nothing, with
    /// errc::missing_control_id, errc::invalid_host, errc::invalid_port, errc::invalid_path,
    /// outbox_errc::invalid_lanes, outbox_errc::control_id_conflict, or a store error.
    /// Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_enqueue(outbox_destination to, message msg, enqueue_options options = {},
                       CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, enqueue_signature>(
            [i = impl_](auto handler, outbox_destination d, message m, enqueue_options o) {
                enqueue_impl(i, std::move(d), std::move(m), std::move(o),
                             boost::asio::any_completion_handler<enqueue_signature>(std::move(handler)));
            },
            token, std::move(to), std::move(msg), std::move(options));
    }

    /// The coroutine form of async_enqueue. (Overloads rather than a default argument: GCC 12
    /// may destroy twice a class temporary that lives across a co_await, as a defaulted
    /// argument of the awaited call does.)
    boost::asio::awaitable<outcome::result<enqueue_result>> enqueue(const outbox_destination& to, message msg);
    boost::asio::awaitable<outcome::result<enqueue_result>> enqueue(const outbox_destination& to, message msg,
                                                                    const enqueue_options& options);

    /// Delivers the messages pending for `to`, every lane at once, until cancelled or, with
    /// options.until_empty, until nothing is pending. Completion signature void(error_code):
    /// no error after until_empty; operation_aborted after a cancellation; otherwise what
    /// stopped it: outbox_errc::delivery_locked (another process delivers from this file),
    /// already_running, a store error, errc::invalid_host, invalid_port, tls_setup_failed.
    /// A lane whose lease another instance holds or took over (lease_held, lease_lost), or
    /// whose store connection was lost (store_unavailable), does not stop the run: the run
    /// tries the lane again at its next poll.
    ///
    /// Cancellation (any type) stops it gracefully: sends still queued in a connection are
    /// withdrawn unsent (their messages go back to queued), a message already written gets its
    /// ACK or times out and is recorded, the leases are released, then it completes.
    /// Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_run(outbox_destination to, outbox_run_options options = {}, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, run_signature>(
            [i = impl_](auto handler, outbox_destination d, outbox_run_options o) {
                run_impl(i, std::move(d), std::move(o),
                         boost::asio::any_completion_handler<run_signature>(std::move(handler)));
            },
            token, std::move(to), std::move(options));
    }

    /// The coroutine form of async_run.
    boost::asio::awaitable<outcome::result<void>> run(const outbox_destination& to, const outbox_run_options& options);

    /// The first outcome after `after` in the stream of outcomes: the record of the first
    /// message that became final with outbox_record::outcome > after, waiting until there is
    /// one (recorded by this instance or by another process; see poll_interval). Keep the
    /// record's `outcome` as the next cursor, durably if need be: the stream is stored, so an
    /// outcome recorded while the application was down is found when it asks again. 0 starts
    /// from the beginning; async_latest_outcome gives the cursor of "from now on". A dead
    /// letter that is retried leaves the stream and comes back when it is final again.
    /// Completion signature void(error_code, outbox_record). Cancellation (any type):
    /// completes with operation_aborted. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_next_outcome(std::uint64_t after, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, record_signature>(
            [i = impl_](auto handler, std::uint64_t a) {
                next_outcome_impl(i, a, boost::asio::any_completion_handler<record_signature>(std::move(handler)));
            },
            token, after);
    }

    /// The coroutine form of async_next_outcome.
    boost::asio::awaitable<outcome::result<outbox_record>> next_outcome(std::uint64_t after);

    /// The cursor of the last outcome recorded so far (0 when none): async_next_outcome from
    /// it waits for outcomes to come. Completion signature void(error_code, std::uint64_t).
    /// Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_latest_outcome(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, count_signature>(
            [i = impl_](auto handler) {
                latest_outcome_impl(i, boost::asio::any_completion_handler<count_signature>(std::move(handler)));
            },
            token);
    }

    /// The record of outbox id `id`, or outbox_errc::not_found. Completion signature
    /// void(error_code, outbox_record). Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_get(std::int64_t id, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, record_signature>(
            [i = impl_](auto handler, std::int64_t n) {
                get_impl(i, n, boost::asio::any_completion_handler<record_signature>(std::move(handler)));
            },
            token, id);
    }

    /// The record of the message with MSH-10 `control_id` for `to`, or outbox_errc::not_found.
    /// Completion signature void(error_code, outbox_record). Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_find(outbox_destination to, std::string control_id, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, record_signature>(
            [i = impl_](auto handler, outbox_destination d, std::string c) {
                find_impl(i, std::move(d), std::move(c),
                          boost::asio::any_completion_handler<record_signature>(std::move(handler)));
            },
            token, std::move(to), std::move(control_id));
    }

    /// Records matching `filter`, by outbox id. Completion signature
    /// void(error_code, std::vector<outbox_record>). Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_list(outbox_filter filter, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, records_signature>(
            [i = impl_](auto handler, outbox_filter f) {
                list_impl(i, std::move(f), boost::asio::any_completion_handler<records_signature>(std::move(handler)));
            },
            token, std::move(filter));
    }

    /// Counts per destination and lane, with their leases. Completion signature
    /// void(error_code, std::vector<outbox_lane_status>), by destination and lane.
    /// Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_status(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, status_signature>(
            [i = impl_](auto handler) {
                status_impl(i, boost::asio::any_completion_handler<status_signature>(std::move(handler)));
            },
            token);
    }

    /// Queues the dead letters among `ids` again (attempts from 0, out of the outcome stream
    /// until final again); ids that are not dead letters are left alone. Runs pick them up
    /// next in their lane. Completion signature void(error_code, std::uint64_t): how many were
    /// queued. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_retry(std::vector<std::int64_t> ids, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, count_signature>(
            [i = impl_](auto handler, std::vector<std::int64_t> v) {
                retry_impl(i, std::move(v), false,
                           boost::asio::any_completion_handler<count_signature>(std::move(handler)));
            },
            token, std::move(ids));
    }

    /// As async_retry, for every dead letter of the outbox.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_retry_dead(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, count_signature>(
            [i = impl_](auto handler) {
                retry_impl(i, {}, true, boost::asio::any_completion_handler<count_signature>(std::move(handler)));
            },
            token);
    }

    /// Deletes the final messages that became final before `final_before`; their MSH-10s may
    /// then be enqueued again. Completion signature void(error_code, std::uint64_t): how many
    /// were deleted. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_purge(outbox_clock::time_point final_before, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, count_signature>(
            [i = impl_](auto handler, outbox_clock::time_point t) {
                purge_impl(i, t, boost::asio::any_completion_handler<count_signature>(std::move(handler)));
            },
            token, final_before);
    }

    /// Closes: runs stop as when cancelled, waiting outcomes complete with outbox_errc::closed,
    /// the store finishes what it was given and closes the file; later operations fail with
    /// outbox_errc::closed. Idempotent: every call completes, with signature void(), once the
    /// outbox is closed. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [i = impl_](auto handler) { close_impl(i, boost::asio::any_completion_handler<void()>(std::move(handler))); },
            token);
    }

    /// The coroutine form of async_close.
    boost::asio::awaitable<void> close();

    /// The executor given to open.
    executor_type get_executor() const noexcept;

    struct impl;

private:
    explicit outbox(std::shared_ptr<impl> i) noexcept;
    static void enqueue_impl(const std::shared_ptr<impl>& i, outbox_destination to, message msg,
                             enqueue_options options, boost::asio::any_completion_handler<enqueue_signature> h);
    static void run_impl(const std::shared_ptr<impl>& i, outbox_destination to, outbox_run_options options,
                         boost::asio::any_completion_handler<run_signature> h);
    static void next_outcome_impl(const std::shared_ptr<impl>& i, std::uint64_t after,
                                  boost::asio::any_completion_handler<record_signature> h);
    static void latest_outcome_impl(const std::shared_ptr<impl>& i,
                                    boost::asio::any_completion_handler<count_signature> h);
    static void get_impl(const std::shared_ptr<impl>& i, std::int64_t id,
                         boost::asio::any_completion_handler<record_signature> h);
    static void find_impl(const std::shared_ptr<impl>& i, outbox_destination to, std::string control_id,
                          boost::asio::any_completion_handler<record_signature> h);
    static void list_impl(const std::shared_ptr<impl>& i, outbox_filter filter,
                          boost::asio::any_completion_handler<records_signature> h);
    static void status_impl(const std::shared_ptr<impl>& i, boost::asio::any_completion_handler<status_signature> h);
    static void retry_impl(const std::shared_ptr<impl>& i, std::vector<std::int64_t> ids, bool all_dead,
                           boost::asio::any_completion_handler<count_signature> h);
    static void purge_impl(const std::shared_ptr<impl>& i, outbox_clock::time_point before,
                           boost::asio::any_completion_handler<count_signature> h);
    static void close_impl(const std::shared_ptr<impl>& i, boost::asio::any_completion_handler<void()> h);
    std::shared_ptr<impl> impl_;
};

} // namespace hl7
