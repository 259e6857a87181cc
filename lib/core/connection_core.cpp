#include "core/connection_core.hpp"

#include <boost/asio/error.hpp>

#include <algorithm>
#include <cmath>
#include <utility>

namespace hl7::detail {

// ---------------------------------------------------------------------------------------
// backoff, counters, events

backoff::backoff(const reconnect_policy& policy, std::uint64_t seed)
    : policy_(policy), rng_(seed)
{
}

clock::duration backoff::delay(std::uint32_t failures)
{
    using ms = std::chrono::duration<double, std::milli>;
    const double initial = static_cast<double>(policy_.initial.count());
    const double cap = static_cast<double>(policy_.max.count());
    const double factor = std::max(1.0, policy_.factor);
    const double exponent = failures > 1 ? static_cast<double>(failures - 1) : 0.0;
    double d = std::min(cap, initial * std::pow(factor, exponent));
    const double jitter = std::clamp(policy_.jitter, 0.0, 1.0);
    if (jitter > 0) {
        std::uniform_real_distribution<double> spread(-jitter, jitter);
        d *= 1.0 + spread(rng_);
    }
    return std::chrono::duration_cast<clock::duration>(ms(std::max(0.0, d)));
}

connection_counters counter_block::snapshot() const noexcept
{
    constexpr auto r = std::memory_order_relaxed;
    return {sent.load(r),   acknowledged.load(r), rejected.load(r), timed_out.load(r),
            failed.load(r), reconnects.load(r),   queued.load(r),   discarded.load(r)};
}

void add(connection_counters& total, const connection_counters& more) noexcept
{
    total.sent += more.sent;
    total.acknowledged += more.acknowledged;
    total.rejected += more.rejected;
    total.timed_out += more.timed_out;
    total.failed += more.failed;
    total.reconnects += more.reconnects;
    total.queued += more.queued;
    total.discarded += more.discarded;
}

connection_event owned_event::view() const
{
    using namespace std::chrono;
    return connection_event{what,
                 attempt,
                 duration_cast<milliseconds>(delay),
                 error,
                 control_id,
                 code,
                 duration_cast<microseconds>(round_trip),
                 endpoint};
}

// ---------------------------------------------------------------------------------------
// connection_core

connection_core::connection_core(const connection_options& options, counter_block& counters, std::uint64_t seed)
    : options_(options),
      counters_(counters),
      backoff_(options.reconnect, seed),
      state_(connection_state::idle),
      decoder_(options.max_frame)
{
}

bool connection_core::next(action& out)
{
    if (taken_ == actions_.size()) {
        actions_.clear(); // keeps the capacity: no allocation per message
        taken_ = 0;
        return false;
    }
    out = std::move(actions_[taken_++]);
    return true;
}

void connection_core::start(clock::time_point now)
{
    if (state_ == connection_state::idle || state_ == connection_state::failed) {
        failures_ = 0;
        begin_connect(now);
        rearm();
    }
}

void connection_core::send(send_id id, std::string control_id, clock::time_point now)
{
    if (state_ == connection_state::closing || state_ == connection_state::closed)
        complete(id, errc::closed);
    else if (state_ == connection_state::failed)
        complete(id, errc::not_connected);
    else if (queue_.size() >= options_.queue_limit)
        complete(id, errc::queue_full);
    else {
        const auto deadline =
            options_.queue_timeout.count() > 0 ? now + options_.queue_timeout : clock::time_point::max();
        queue_.push_back({id, std::move(control_id), deadline});
        counters_.queued.fetch_add(1, std::memory_order_relaxed);
        if (state_ == connection_state::idle)
            begin_connect(now);
        try_write(now);
    }
    rearm();
}

void connection_core::cancel(send_id id, bool terminal, clock::time_point now)
{
    const auto it = std::find_if(queue_.begin(), queue_.end(), [id](const queued_send& q) { return q.id == id; });
    if (it != queue_.end()) {
        queue_.erase(it);
        counters_.queued.fetch_sub(1, std::memory_order_relaxed);
        complete(id, boost::asio::error::operation_aborted);
    } else if (terminal && inflight_ && inflight_->id == id && !inflight_->abandoned) {
        // The message is on the wire: its ACK must still be consumed, so the flight stays.
        inflight_->abandoned = true;
        complete(id, boost::asio::error::operation_aborted);
    }
    (void)now;
    rearm();
}

void connection_core::close(clock::time_point now)
{
    (void)now;
    switch (state_) {
    case connection_state::closed:
        actions_.push_back({action::kind::closed});
        return;
    case connection_state::closing:
        return;
    default:
        break;
    }
    fail_queue(errc::closed);
    if (inflight_ && state_ == connection_state::connected) {
        state_ = connection_state::closing; // the message in flight gets its ACK or times out first
    } else {
        finish_close();
    }
    rearm();
}

void connection_core::handshaking(std::uint64_t link, clock::time_point now)
{
    if (link != link_ || state_ != connection_state::connecting || !options_.tls)
        return;
    handshaking_ = true;
    deadline_ = now + options_.tls->handshake_timeout;
    rearm();
}

void connection_core::connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now)
{
    if (link != link_ || state_ != connection_state::connecting)
        return;
    state_ = connection_state::connected;
    failures_before_connect_ = std::exchange(failures_, 0);
    if (ever_connected_)
        counters_.reconnects.fetch_add(1, std::memory_order_relaxed);
    ever_connected_ = true;
    decoder_ = mllp::decoder(options_.max_frame);
    owned_event ev{connection_event::kind::connected};
    ev.endpoint = peer;
    notify(std::move(ev));
    try_write(now);
    rearm();
}

void connection_core::connect_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link != link_ || state_ != connection_state::connecting)
        return;
    actions_.push_back({action::kind::close_socket, link_});
    retry_or_give_up(ec, now);
    rearm();
}

void connection_core::written(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link != link_ || !write_pending_)
        return;
    write_pending_ = false;
    if (ec) {
        link_lost(ec, now);
    } else {
        counters_.sent.fetch_add(1, std::memory_order_relaxed);
        if (inflight_) {
            owned_event ev{connection_event::kind::sent};
            ev.control_id = inflight_->control_id;
            notify(std::move(ev));
        }
        try_write(now);
    }
    rearm();
}

void connection_core::received(std::uint64_t link, std::string_view bytes, clock::time_point now)
{
    if (link != link_ || (state_ != connection_state::connected && state_ != connection_state::closing))
        return;
    decoder_.feed(bytes);
    while (auto frame = decoder_.next()) {
        if (*frame) {
            if (!on_frame(frame->value(), now))
                break; // the link was reset; what is left of the bytes belongs to it
            continue;
        }
        const boost::system::error_code ec = frame->error();
        if (ec == errc::frame_too_large && inflight_) {
            // The reply was dropped unread: fail the message rather than wait for a timeout.
            finish_flight(ec);
            link_lost(ec, now);
            break;
        }
        counters_.discarded.fetch_add(1, std::memory_order_relaxed);
        owned_event ev{connection_event::kind::discarded};
        ev.error = ec;
        notify(std::move(ev));
    }
    // Writing the next message only now, after every frame of these bytes was handled,
    // keeps a stray frame that came with the last ACK from answering the next message.
    try_write(now);
    rearm();
}

void connection_core::read_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link != link_)
        return;
    link_lost(ec, now);
    rearm();
}

void connection_core::timer_fired(clock::time_point now)
{
    armed_ = clock::time_point::max();
    if (state_ == connection_state::connecting && now >= deadline_) {
        actions_.push_back({action::kind::close_socket, link_});
        retry_or_give_up(handshaking_ ? errc::tls_handshake_timeout : errc::connect_timeout, now);
    } else if (state_ == connection_state::backing_off && now >= deadline_) {
        begin_connect(now);
    }
    if (inflight_ && now >= inflight_->deadline) {
        counters_.timed_out.fetch_add(1, std::memory_order_relaxed);
        owned_event ev{connection_event::kind::timed_out};
        ev.control_id = inflight_->control_id;
        notify(std::move(ev));
        finish_flight(errc::ack_timeout);
        // Reset the link so that a late ACK can never be read as the answer to the next message.
        link_lost(errc::ack_timeout, now);
    }
    while (!queue_.empty() && now >= queue_.front().deadline) {
        const send_id id = queue_.front().id;
        queue_.pop_front();
        counters_.queued.fetch_sub(1, std::memory_order_relaxed);
        complete(id, errc::queue_timeout);
    }
    rearm();
}

// ---------------------------------------------------------------------------------------

void connection_core::begin_connect(clock::time_point now)
{
    state_ = connection_state::connecting;
    ++link_;
    handshaking_ = false;
    deadline_ = now + options_.connect_timeout;
    owned_event ev{connection_event::kind::connecting};
    ev.attempt = failures_ + 1;
    notify(std::move(ev));
    action a{action::kind::connect, link_};
    a.attempt = failures_ + 1;
    actions_.push_back(std::move(a));
}

void connection_core::retry_or_give_up(boost::system::error_code ec, clock::time_point now)
{
    ++failures_;
    last_error_ = ec;
    if (options_.reconnect.max_attempts != 0 && failures_ >= options_.reconnect.max_attempts) {
        state_ = connection_state::failed;
        deadline_ = clock::time_point::max();
        owned_event ev{connection_event::kind::gave_up};
        ev.attempt = failures_;
        ev.error = ec;
        notify(std::move(ev));
        fail_queue(errc::not_connected);
        disarm();
        return;
    }
    state_ = connection_state::backing_off;
    const clock::duration d = backoff_.delay(failures_);
    deadline_ = now + d;
    owned_event ev{connection_event::kind::reconnect_scheduled};
    ev.attempt = failures_ + 1;
    ev.delay = d;
    ev.error = ec;
    notify(std::move(ev));
}

void connection_core::link_lost(boost::system::error_code ec, clock::time_point now)
{
    if (state_ != connection_state::connected && state_ != connection_state::closing)
        return;
    actions_.push_back({action::kind::close_socket, link_});
    write_pending_ = false;
    owned_event lost{connection_event::kind::disconnected};
    lost.error = ec;
    notify(std::move(lost));
    // Under TLS 1.3 a server's verdict on our certificate comes after the handshake, with its
    // first records: such a refusal is the reason the message failed, and it makes the
    // attempt a failed one, as a refusal during the handshake does, so that a connection
    // whose certificate is refused gives up after the maximum attempts.
    const bool refused = ec == errc::tls_no_client_certificate || ec == errc::tls_untrusted_certificate ||
                         ec == errc::tls_certificate_expired;
    if (inflight_)
        finish_flight(refused ? ec : make_error_code(errc::connection_lost));
    if (state_ == connection_state::closing) {
        finish_close();
        return;
    }
    ++link_; // whatever the old socket still reports is stale
    if (refused) {
        failures_ = failures_before_connect_;
        retry_or_give_up(ec, now);
        return;
    }
    state_ = connection_state::backing_off;
    const clock::duration d = backoff_.delay(0);
    deadline_ = now + d;
    owned_event ev{connection_event::kind::reconnect_scheduled};
    ev.attempt = 1;
    ev.delay = d;
    ev.error = ec;
    notify(std::move(ev));
}

void connection_core::finish_close()
{
    if (state_ == connection_state::connected || state_ == connection_state::connecting || state_ == connection_state::closing)
        actions_.push_back({action::kind::close_socket, link_});
    ++link_;
    state_ = connection_state::closed;
    deadline_ = clock::time_point::max();
    write_pending_ = false;
    notify(owned_event{connection_event::kind::closed});
    disarm();
    actions_.push_back({action::kind::closed});
}

void connection_core::try_write(clock::time_point now)
{
    if (state_ != connection_state::connected || inflight_ || write_pending_ || queue_.empty())
        return;
    queued_send next = std::move(queue_.front());
    queue_.pop_front();
    counters_.queued.fetch_sub(1, std::memory_order_relaxed);
    inflight_ = flight{next.id, std::move(next.control_id), now, now + options_.ack_timeout};
    write_pending_ = true;
    action a{action::kind::write, link_};
    a.id = next.id;
    actions_.push_back(std::move(a));
}

// Returns false when the frame made the link reset.
bool connection_core::on_frame(std::string_view payload, clock::time_point now)
{
    const std::string hooked = options_.receive_hook ? options_.receive_hook(payload) : std::string();
    const std::string_view text = options_.receive_hook ? std::string_view(hooked) : payload;

    auto discard = [&] {
        counters_.discarded.fetch_add(1, std::memory_order_relaxed);
        notify(owned_event{connection_event::kind::discarded});
    };
    if (!inflight_) {
        discard();
        return true;
    }
    auto parsed = message::parse(text);
    auto reply = parsed ? ack::read(std::move(parsed).value(), std::chrono::duration_cast<std::chrono::microseconds>(
                                                                     now - inflight_->started))
                        : outcome::result<ack>(errc::invalid_ack);
    if (!reply) {
        finish_flight(errc::invalid_ack);
        link_lost(errc::invalid_ack, now);
        return false;
    }
    if (reply.value().control_id() != inflight_->control_id) {
        if (recently_finished(reply.value().control_id())) {
            discard(); // a late or repeated ACK of an earlier message
            return true;
        }
        finish_flight(errc::ack_mismatch);
        link_lost(errc::ack_mismatch, now);
        return false;
    }
    (reply.value().accepted() ? counters_.acknowledged : counters_.rejected).fetch_add(1, std::memory_order_relaxed);
    owned_event ev{connection_event::kind::acknowledged};
    ev.control_id = inflight_->control_id;
    ev.code = reply.value().code();
    ev.round_trip = now - inflight_->started;
    notify(std::move(ev));
    finish_flight({}, std::move(reply).value());
    if (state_ == connection_state::closing)
        finish_close();
    return true;
}

void connection_core::finish_flight(boost::system::error_code ec, hl7::ack ack)
{
    flight f = std::move(*inflight_);
    inflight_.reset();
    if (!f.abandoned)
        complete(f.id, ec, std::move(ack));
    remember(std::move(f.control_id));
}

void connection_core::complete(send_id id, boost::system::error_code ec, hl7::ack ack)
{
    if (ec && ec != errc::ack_timeout)
        counters_.failed.fetch_add(1, std::memory_order_relaxed);
    action a{action::kind::complete};
    a.id = id;
    a.error = ec;
    if (!ec)
        a.data = std::move(ack);
    actions_.push_back(std::move(a));
}

void connection_core::fail_queue(boost::system::error_code ec)
{
    for (queued_send& q : queue_)
        complete(q.id, ec);
    counters_.queued.fetch_sub(queue_.size(), std::memory_order_relaxed);
    queue_.clear();
}

void connection_core::notify(owned_event ev)
{
    if (!options_.observer)
        return;
    action a{action::kind::notify};
    a.data = std::move(ev);
    actions_.push_back(std::move(a));
}

void connection_core::remember(std::string control_id)
{
    recent_[recent_next_] = std::move(control_id);
    recent_next_ = (recent_next_ + 1) % recent_.size();
}

bool connection_core::recently_finished(std::string_view control_id) const noexcept
{
    return std::find(recent_.begin(), recent_.end(), control_id) != recent_.end();
}

// The timer is armed lazily: only when a deadline comes before the one armed. A later or
// vanished deadline leaves the timer as it is; when it fires early, timer_fired() arms it for
// what is due next. In the steady state (one ACK deadline after another) this spares two
// timer updates, each a system call, per message.
void connection_core::rearm()
{
    clock::time_point t = clock::time_point::max();
    if (state_ == connection_state::connecting || state_ == connection_state::backing_off)
        t = deadline_;
    if (inflight_)
        t = std::min(t, inflight_->deadline);
    if (!queue_.empty())
        t = std::min(t, queue_.front().deadline);
    if (t < armed_)
        arm(t);
}

// Nothing can be due any more (closed, or gave up): let the timer go.
void connection_core::disarm()
{
    if (armed_ != clock::time_point::max())
        arm(clock::time_point::max());
}

void connection_core::arm(clock::time_point t)
{
    armed_ = t;
    action a{action::kind::arm_timer};
    a.deadline = t;
    actions_.push_back(std::move(a));
}

} // namespace hl7::detail
