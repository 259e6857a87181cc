#include "core/lane_core.hpp"

#include <boost/asio/error.hpp>

#include <algorithm>
#include <cassert>
#include <stdexcept>

namespace hl7::detail {

lane_change lane_change::mark_written(std::int64_t id, outbox_clock::time_point at, bool possible_duplicate)
{
    return {.what = kind::written, .id = id, .at = at, .possible_duplicate = possible_duplicate};
}

lane_change lane_change::requeue(std::int64_t id, bool uncount, std::string error)
{
    return {.what = kind::requeued, .id = id, .uncount = uncount, .error = std::move(error)};
}

lane_change lane_change::finish(std::int64_t id, outbox_clock::time_point at, outbox_state state, std::string error,
                                std::optional<ack_code> code, std::string ack, std::chrono::microseconds round_trip)
{
    return {.what = kind::finished,
            .id = id,
            .at = at,
            .state = state,
            .code = code,
            .ack = std::move(ack),
            .round_trip = round_trip,
            .error = std::move(error)};
}

lane_core::lane_core(const settings& s) : settings_(s), schedule_(s.retry, s.seed)
{
    settings_.window = std::max<std::size_t>(1, settings_.window);
    settings_.batch = std::max(settings_.batch, settings_.window);
}

void lane_core::start(outbox_clock::time_point now)
{
    if (started_ || stopped_)
        return;
    started_ = true;
    claiming_ = true;
    claim_asked_ = now;
    actions_.push(action::claim());
}

void lane_core::claimed(boost::system::error_code ec, outbox_clock::time_point now)
{
    if (stopped_ || !claiming_)
        return;
    claiming_ = false;
    if (ec) {
        if (!holding_) {
            // The first claim failed: nothing was started, nothing to wait for.
            stopped_ = true;
            actions_.push(action::stopped(ec));
            return;
        }
        fail(ec);
    } else {
        holding_ = true;
        renew_at_ = now + settings_.renew_every;
        if (settings_.lease_ttl > outbox_clock::duration::zero())
            lease_until_ = claim_asked_ + settings_.lease_ttl;
    }
    pump(now);
}

void lane_core::fetched(boost::system::error_code ec, std::vector<outbox_record> records, outbox_clock::time_point now)
{
    if (stopped_ || !fetching_)
        return;
    fetching_ = false;
    if (ec) {
        fail(ec);
    } else if (!stopping_) {
        if (records.empty()) {
            // Something stored while the query ran may not be in its answer: ask again.
            exhausted_ = !woken_;
        } else {
            for (outbox_record& r : records) {
                entry e{.rec = std::move(r)};
                e.in_doubt = e.rec.state == outbox_state::written;
                entries_.push_back(std::move(e));
            }
            if (drained_) {
                drained_ = false;
                actions_.push(action::busy());
            }
        }
        woken_ = false;
    }
    pump(now);
}

void lane_core::recorded(boost::system::error_code ec, outbox_clock::time_point now)
{
    if (stopped_ || recording_.empty())
        return;
    std::vector<lane_change> batch = std::move(recording_);
    recording_.clear();
    bool expired = false;
    if (ec) {
        // Nothing of the batch was stored: a message marked is not sent, an outcome not stored
        // leaves its message written (sent again, flagged, by the next holder of the lane).
        for (const lane_change& c : batch)
            if (entry* e = find(c.id))
                e->ph = phase::waiting;
        fail(ec);
        pump(now);
        return;
    }
    for (lane_change& c : batch) {
        entry* e = find(c.id);
        if (e == nullptr)
            continue;
        switch (c.what) {
        case lane_change::kind::written:
            e->rec.state = outbox_state::written;
            ++e->rec.attempts;
            e->rec.possible_duplicate = e->rec.possible_duplicate || c.possible_duplicate;
            if (failed_) {
                e->ph = phase::waiting;
            } else if (now >= lease_until_) {
                // Written in the store, so whoever delivers it next sends it flagged.
                e->ph = phase::waiting;
                e->in_doubt = true;
                expired = true;
            } else if (stopping_ || draining_) {
                // Not handed over after all: back to queued, and not counted as an attempt.
                e->ph = phase::requeuing;
                changes_.push_back(lane_change::requeue(c.id, true));
            } else {
                e->ph = phase::sending;
                actions_.push(action::notify({.what = outbox_event::kind::written,
                                                   .id = c.id,
                                                   .control_id = e->rec.control_id,
                                                   .state = outbox_state::written,
                                                   .possible_duplicate = e->rec.possible_duplicate,
                                                   .attempts = e->rec.attempts}));
                actions_.push(action::send(c.id));
            }
            break;
        case lane_change::kind::requeued:
            e->rec.state = outbox_state::queued;
            if (c.uncount && e->rec.attempts > 0)
                --e->rec.attempts;
            e->ph = phase::waiting;
            break;
        case lane_change::kind::finished: {
            lane_note note{.what = outbox_event::kind::outcome,
                           .id = c.id,
                           .control_id = std::move(e->rec.control_id),
                           .state = c.state,
                           .possible_duplicate = e->rec.possible_duplicate,
                           .attempts = e->rec.attempts};
            entries_.erase(entries_.begin() + index_of(*e));
            actions_.push(action::notify(std::move(note)));
            break;
        }
        }
    }
    if (expired)
        fail(outbox_errc::lease_lost);
    pump(now);
}

void lane_core::sent(std::int64_t id, boost::system::error_code ec, const hl7::ack& ack, outbox_clock::time_point now)
{
    entry* e = find(id);
    if (stopped_ || e == nullptr || e->ph != phase::sending)
        return;
    if (failed_) {
        // Nothing more is written: the message stays as the store has it (written, so flagged
        // when it is sent again).
        e->in_doubt = true;
        e->ph = phase::waiting;
    } else if (!ec) {
        const bool accepted = ack.accepted();
        std::string why;
        if (!accepted) {
            why = ack.explanation();
            if (why.empty())
                why = ack.error().message();
        }
        changes_.push_back(lane_change::finish(id, now, accepted ? outbox_state::acknowledged : outbox_state::rejected,
                                               std::move(why), ack.code(), std::string(ack.message().str()),
                                               ack.round_trip()));
        e->ph = phase::finishing;
    } else if (ec == boost::asio::error::operation_aborted) {
        // Withdrawn by the lane (a stop, or a failure before it) while still queued: never written.
        e->ph = phase::requeuing;
        e->not_before = now;
        changes_.push_back(lane_change::requeue(id, true));
    } else {
        e->in_doubt = e->in_doubt || in_doubt(ec);
        const retry_decision d = schedule_.after_failure(ec, e->rec.attempts, e->rec.queued_at, now);
        if (d.what == retry_decision::kind::give_up) {
            std::string why = ec.message();
            if (!permanent_failure(ec))
                why += " (gave up after " + std::to_string(e->rec.attempts) + " attempt" +
                       (e->rec.attempts == 1 ? "" : "s") + ")";
            changes_.push_back(lane_change::finish(id, now, outbox_state::failed, std::move(why)));
            e->ph = phase::finishing;
        } else {
            e->not_before = now + d.delay;
            actions_.push(action::notify({.what = outbox_event::kind::retry_scheduled,
                                               .id = id,
                                               .control_id = e->rec.control_id,
                                               .state = in_doubt(ec) ? outbox_state::written : outbox_state::queued,
                                               .possible_duplicate = e->rec.possible_duplicate,
                                               .attempts = e->rec.attempts,
                                               .error = ec,
                                               .delay = d.delay}));
            if (in_doubt(ec)) {
                e->ph = phase::waiting; // stays written in the store
            } else {
                e->ph = phase::requeuing;
                changes_.push_back(lane_change::requeue(id, false, ec.message()));
            }
            // It is tried again before anything behind it: withdraw what could overtake it.
            draining_ = true;
            cancel_sending(static_cast<std::size_t>(index_of(*e)) + 1);
        }
    }
    pump(now);
}

void lane_core::timer_fired(outbox_clock::time_point now)
{
    if (stopped_)
        return;
    armed_ = outbox_clock::time_point::max();
    if (holding_ && !claiming_ && now >= renew_at_) {
        claiming_ = true;
        renew_at_ = outbox_clock::time_point::max();
        claim_asked_ = now;
        actions_.push(action::claim());
    }
    pump(now);
}

void lane_core::wake(outbox_clock::time_point now)
{
    if (stopped_ || stopping_)
        return;
    exhausted_ = false;
    if (fetching_)
        woken_ = true;
    pump(now);
}

void lane_core::stop(outbox_clock::time_point now)
{
    if (stopped_ || stopping_)
        return;
    stopping_ = true;
    if (!started_) {
        stopped_ = true;
        actions_.push(action::stopped());
        return;
    }
    cancel_sending(0);
    pump(now);
}

const outbox_record& lane_core::record(std::int64_t id) const
{
    for (const entry& e : entries_)
        if (e.rec.id == id)
            return e.rec;
    throw std::out_of_range("lane_core::record: no message " + std::to_string(id));
}

lane_core::entry* lane_core::find(std::int64_t id)
{
    for (entry& e : entries_)
        if (e.rec.id == id)
            return &e;
    return nullptr;
}

std::ptrdiff_t lane_core::index_of(const entry& e) const
{
    for (std::size_t i = 0; i < entries_.size(); ++i)
        if (&entries_[i] == &e)
            return static_cast<std::ptrdiff_t>(i);
    assert(false && "entry not in the lane");
    return 0;
}

bool lane_core::any_in(phase p) const
{
    return std::any_of(entries_.begin(), entries_.end(), [p](const entry& e) { return e.ph == p; });
}

void lane_core::pump(outbox_clock::time_point now)
{
    if (stopped_ || !holding_)
        return;
    if (!stopping_) {
        mark_eligible(now);
        maybe_fetch();
    }
    flush();
    if (!stopping_ && entries_.empty() && exhausted_ && !fetching_ && !drained_) {
        drained_ = true;
        actions_.push(action::drained());
    }
    maybe_stop();
    if (!stopped_)
        rearm(now);
}

void lane_core::mark_eligible(outbox_clock::time_point now)
{
    if (draining_) {
        if (any_in(phase::sending) || any_in(phase::marking))
            return;
        draining_ = false;
    }
    std::size_t in_flight = 0;
    for (const entry& e : entries_)
        in_flight += e.ph == phase::marking || e.ph == phase::sending;
    for (entry& e : entries_) {
        if (e.ph == phase::finishing || e.ph == phase::marking || e.ph == phase::sending)
            continue;
        // In order: a message waiting for its retry, or on its way back to queued, holds up
        // everything behind it.
        if (e.ph == phase::requeuing || e.not_before > now || in_flight >= settings_.window)
            break;
        e.ph = phase::marking;
        changes_.push_back(lane_change::mark_written(e.rec.id, now, e.in_doubt));
        ++in_flight;
    }
}

void lane_core::flush()
{
    if (failed_ || !recording_.empty() || changes_.empty())
        return;
    recording_ = changes_;
    actions_.push(action::record(std::move(changes_)));
    changes_.clear();
}

void lane_core::maybe_fetch()
{
    if (fetching_ || exhausted_ || !entries_.empty())
        return;
    fetching_ = true;
    woken_ = false;
    actions_.push(action::fetch(settings_.batch));
}

void lane_core::maybe_stop()
{
    if (stopped_ || !stopping_ || claiming_ || fetching_ || !recording_.empty() || (!failed_ && !changes_.empty()))
        return;
    if (std::any_of(entries_.begin(), entries_.end(), [](const entry& e) { return e.ph != phase::waiting; }))
        return;
    stopped_ = true;
    if (armed_ != outbox_clock::time_point::max()) {
        armed_ = outbox_clock::time_point::max();
        actions_.push(action::arm_timer(armed_));
    }
    actions_.push(action::stopped(error_));
}

void lane_core::fail(boost::system::error_code ec)
{
    if (failed_)
        return;
    failed_ = true;
    stopping_ = true;
    error_ = ec;
    // Changes not yet given to the store are dropped; their messages stay as stored.
    for (const lane_change& c : changes_)
        if (entry* e = find(c.id); e != nullptr && e->ph != phase::sending)
            e->ph = phase::waiting;
    changes_.clear();
    cancel_sending(0);
}

void lane_core::cancel_sending(std::size_t from)
{
    for (std::size_t i = from; i < entries_.size(); ++i)
        if (entries_[i].ph == phase::sending)
            actions_.push(action::cancel(entries_[i].rec.id));
}

void lane_core::rearm(outbox_clock::time_point now)
{
    // The lease's renewal, and the retry of the first message not in flight when it is still
    // to come (one whose time has passed waits for a free slot, not for the timer).
    outbox_clock::time_point deadline = renew_at_;
    if (!stopping_) {
        for (const entry& e : entries_) {
            if (e.ph == phase::finishing || e.ph == phase::marking || e.ph == phase::sending)
                continue;
            if (e.ph == phase::waiting && e.not_before > now)
                deadline = std::min(deadline, e.not_before);
            break;
        }
    }
    if (deadline != armed_) {
        armed_ = deadline;
        actions_.push(action::arm_timer(deadline));
    }
}

} // namespace hl7::detail
