// The I/O-free heart of a lane: which message goes next, what is written to the store before
// and after each sending, what a failure leads to, and how the lane stops. It is stepped by
// events (a lease claimed, messages fetched, changes recorded, a send completed, the timer)
// each stamped with the current time, and answers with actions for the Asio layer to carry
// out: claim or renew the lease, fetch messages, record changes in one transaction, send or
// withdraw a message, arm the one timer, notify the observer. Nothing here touches a store, a
// socket or a clock, so every path is tested by stepping it with a made-up clock.
//
// The rules it keeps:
//   - `written` is committed before the message is handed over, so the store always knows a
//     message that may have reached the peer; sending such a message again sets its
//     possible_duplicate flag.
//   - A failure after which the message certainly was not written (!hl7::in_doubt) puts it
//     back to queued, unflagged; one after which it may have been leaves it written.
//   - Messages go in order: up to `window` messages are in flight, the next only behind those
//     before it. On the first failure, the later ones still queued in the connection are
//     withdrawn (partial cancellation), every outstanding send is waited for, and the lane
//     resumes from its earliest message that is not final. The window is the connection's
//     max_in_flight (1 by default).
//   - Changes are written one transaction at a time, in the order they were decided; the
//     changes decided while one is being written go together in the next.
//   - Nothing is handed over after the lease may have expired (settings::lease_ttl from the
//     time the last successful claim was asked for): the lane stops instead, its message left
//     written, so that an instance paused past its lease does not send beside the new owner.
#pragma once

#include "core/action_queue.hpp"
#include "core/retry_policy.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/outbox/outbox.hpp>

#include <boost/system/error_code.hpp>

#include <cstdint>
#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace hl7::detail {

/// One state change of a message, as a lane writes it. The store applies the changes of one
/// record action in one transaction, after checking that the lane's lease is still held.
struct lane_change {
    enum class kind {
        written,  ///< state written, attempts + 1, written_at = `at`; possible_duplicate |= `possible_duplicate`
        requeued, ///< back to queued (certainly not written); attempts - 1 when `uncount` (withdrawn by the lane)
        finished, ///< final `state` at `at`, with the ACK (`code`, `ack`, `round_trip`) and `error`
    };
    kind what = kind::written;
    std::int64_t id = 0;
    outbox_clock::time_point at{};
    bool possible_duplicate = false;
    bool uncount = false;
    outbox_state state = outbox_state::queued;
    std::optional<ack_code> code = {};
    std::string ack = {};
    std::chrono::microseconds round_trip{};
    std::string error = {};

    static lane_change mark_written(std::int64_t id, outbox_clock::time_point at, bool possible_duplicate);
    static lane_change requeue(std::int64_t id, bool uncount, std::string error = {});
    static lane_change finish(std::int64_t id, outbox_clock::time_point at, outbox_state state, std::string error,
                              std::optional<ack_code> code = {}, std::string ack = {},
                              std::chrono::microseconds round_trip = {});
    friend bool operator==(const lane_change&, const lane_change&) = default;
};

/// What the observer is told (outbox_event without the destination and lane, text owned).
struct lane_note {
    outbox_event::kind what = outbox_event::kind::written;
    std::int64_t id = 0;
    std::string control_id = {};
    outbox_state state = outbox_state::queued;
    bool possible_duplicate = false;
    std::uint32_t attempts = 0;
    boost::system::error_code error = {};
    outbox_clock::duration delay{};
    friend bool operator==(const lane_note&, const lane_note&) = default;
};

class lane_core {
public:
    struct settings {
        std::size_t window = 1;                               ///< messages in flight at once
        std::size_t batch = 32;                               ///< messages read from the store at a time
        outbox_clock::duration renew_every = std::chrono::seconds(10); ///< lease renewal period
        /// How long a claim holds the lease, counted from when the claim was asked for: a
        /// message is not handed over once that time has passed (the lane stops with
        /// outbox_errc::lease_lost), since another instance may have taken the lane over.
        /// Zero: the lease never expires (one process delivers the store).
        outbox_clock::duration lease_ttl{0};
        outbox_retry_policy retry = {};
        std::uint64_t seed = 0;                               ///< of the retry jitter
    };

    struct action {
        enum class kind {
            claim,     ///< claim (first) or renew the lane's lease; report with claimed()
            fetch,     ///< read the first `limit` pending messages of the lane by id; report with fetched()
            record,    ///< write `changes` in one transaction under the lease; report with recorded()
            send,      ///< send message `id` (record(id) has its bytes); report with sent()
            cancel,    ///< withdraw send `id` if it is still queued (partial cancellation)
            arm_timer, ///< let the one timer expire at `deadline` (time_point::max(): never)
            notify,    ///< tell the observer `note`
            drained,   ///< nothing is pending in the lane any more
            busy,      ///< the lane has pending messages again after drained
            stopped,   ///< the lane is done (`error` says why, none after stop()); nothing is
                       ///< outstanding; release the lease and close the connection
        };
        kind what = kind::claim;
        std::int64_t id = 0;
        std::size_t limit = 0;
        std::vector<lane_change> changes = {};
        outbox_clock::time_point deadline{};
        boost::system::error_code error = {};
        lane_note note = {};

        static action claim() { return {.what = kind::claim}; }
        static action fetch(std::size_t limit) { return {.what = kind::fetch, .limit = limit}; }
        static action record(std::vector<lane_change> changes)
        {
            return {.what = kind::record, .changes = std::move(changes)};
        }
        static action send(std::int64_t id) { return {.what = kind::send, .id = id}; }
        static action cancel(std::int64_t id) { return {.what = kind::cancel, .id = id}; }
        static action arm_timer(outbox_clock::time_point t) { return {.what = kind::arm_timer, .deadline = t}; }
        static action notify(lane_note n) { return {.what = kind::notify, .note = std::move(n)}; }
        static action drained() { return {.what = kind::drained}; }
        static action busy() { return {.what = kind::busy}; }
        static action stopped(boost::system::error_code ec = {}) { return {.what = kind::stopped, .error = ec}; }
        friend bool operator==(const action&, const action&) = default;
    };

    explicit lane_core(const settings& s);

    // --- inputs ---------------------------------------------------------------------------
    void start(outbox_clock::time_point now);
    void claimed(boost::system::error_code ec, outbox_clock::time_point now);
    void fetched(boost::system::error_code ec, std::vector<outbox_record> records, outbox_clock::time_point now);
    void recorded(boost::system::error_code ec, outbox_clock::time_point now);
    /// The send of `id` completed: `ack` is meaningful when `ec` is clear.
    void sent(std::int64_t id, boost::system::error_code ec, const hl7::ack& ack, outbox_clock::time_point now);
    void timer_fired(outbox_clock::time_point now);
    /// Messages may have been stored for the lane (by this process or, after a poll, another).
    void wake(outbox_clock::time_point now);
    /// Stops gracefully: queued sends withdrawn, written ones finished and recorded.
    void stop(outbox_clock::time_point now);

    // --- outputs --------------------------------------------------------------------------
    /// Takes the next action to carry out, in order; false when there is none.
    bool next(action& out) { return actions_.next(out); }

    /// The record of a message the lane holds (valid until the next input).
    const outbox_record& record(std::int64_t id) const;

private:
    enum class phase {
        waiting,   ///< not handed over; eligible once `not_before` has passed
        marking,   ///< its `written` change is being recorded
        sending,   ///< handed to the connection
        finishing, ///< its final change is being recorded
        requeuing, ///< its `requeued` change is being recorded
    };
    struct entry {
        outbox_record rec;
        phase ph = phase::waiting;
        bool in_doubt = false; // an earlier attempt may have reached the peer
        outbox_clock::time_point not_before{};
    };

    entry* find(std::int64_t id);
    std::ptrdiff_t index_of(const entry& e) const;
    void pump(outbox_clock::time_point now);
    void mark_eligible(outbox_clock::time_point now);
    void flush();
    void maybe_fetch();
    void maybe_stop();
    void fail(boost::system::error_code ec);
    void cancel_sending(std::size_t from);
    void rearm(outbox_clock::time_point now);
    bool any_in(phase p) const;

    settings settings_;
    retry_schedule schedule_;
    std::deque<entry> entries_;          // by id: what was fetched and is not final yet
    std::vector<lane_change> changes_;   // decided, not yet given to a record action
    std::vector<lane_change> recording_; // being written
    bool started_ = false;
    bool holding_ = false;      // the lease was claimed
    bool claiming_ = false;
    bool fetching_ = false;
    bool exhausted_ = false;    // the last fetch found nothing
    bool woken_ = false;        // woken while a fetch was under way: it may have missed something
    bool drained_ = false;      // drained was reported
    bool draining_ = false;     // a send failed: no new sends until none is outstanding
    bool stopping_ = false;
    bool stopped_ = false;
    bool failed_ = false;       // stopping because of error_: nothing more is written
    boost::system::error_code error_{};
    outbox_clock::time_point renew_at_ = outbox_clock::time_point::max();
    outbox_clock::time_point claim_asked_{};
    outbox_clock::time_point lease_until_ = outbox_clock::time_point::max();
    outbox_clock::time_point armed_ = outbox_clock::time_point::max();
    action_queue<action> actions_;
};

} // namespace hl7::detail
