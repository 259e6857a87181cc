// libFuzzer target for the connection's core: a property test stepping it with random inputs.
//
// Input: the first bytes choose the options (window 1..5, queue limit and timeout, whether the
// connection gives up, an observer, a receive hook that sometimes throws, TLS); the rest is a
// script of steps: sends (some sharing an MSH-10), cancellations of every type at every stage,
// graceful and immediate closes, starts, connects and failures on the current and on stale
// links, write results, bytes in random splits (ACKs of messages in flight, of finished and
// queued ones, of unknown ids, with any code, repeated, garbage), read failures, time passing
// and the timer firing, on time or early.
//
// Checked after every step: every send completes at most once, and with an ACK only after its
// whole frame was written and only with its own MSA-2; at most one write is outstanding, and
// only of a send not yet completed; at most max_in_flight messages are in flight; the timer is
// armed no later than the earliest deadline (of each queued message, each message written and
// not answered, and as the core computes it); nothing is written once close was asked for;
// each completion is counted once; a reconnection is scheduled within [0, reconnect.max]. At the end, after an immediate close, every send has
// completed exactly once.
#include "core/connection_core.hpp"

#include <hl7/model/mllp.hpp>

#include <boost/asio/error.hpp>

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using hl7::detail::action;
using clock_type = hl7::detail::clock;
namespace asio_error = boost::asio::error;

void check(bool ok)
{
    if (!ok)
        __builtin_trap();
}

std::string ack_frame(std::string_view control_id, std::string_view code)
{
    return hl7::mllp::encode("MSH|^~\\&|R|F|S|F|20240101||ACK|X" + std::string(control_id) + "|P|2.5.1\rMSA|" +
                             std::string(code) + "|" + std::string(control_id) + "\r");
}

struct send_record {
    std::string control_id;
    clock_type::time_point queued_at;
    std::optional<clock_type::time_point> write_started; // on the link it was written on
    std::uint64_t link = 0;
    bool wrote_whole = false; // its write was reported done, without error
    int completions = 0;
};

class driver {
public:
    driver(FuzzedDataProvider& in, const hl7::connection_options& options)
        : in_(in), options_(options), core_(options_, counters_, status_, in.ConsumeIntegral<std::uint64_t>())
    {
    }

    void run()
    {
        while (in_.remaining_bytes() > 0)
            step();
        // Whatever was left: an immediate close completes it.
        core_.close(hl7::close_mode::immediate, now_);
        drain();
        for (const auto& [id, s] : sends_)
            check(s.completions == 1);
    }

private:
    void step()
    {
        switch (in_.ConsumeIntegralInRange<int>(0, 15)) {
        case 0:
        case 1: send(); break;
        case 2: cancel(); break;
        case 3: closing_ = true; core_.close(hl7::close_mode::graceful, now_); break;
        case 4: closing_ = true; core_.close(hl7::close_mode::immediate, now_); break;
        case 5: core_.start(now_); break;
        case 6: core_.connected(some_link(), {}, now_); break;
        case 7: core_.connect_failed(some_link(), failure(), now_); break;
        case 8: written(); break;
        case 9:
        case 10: receive(); break;
        case 11: core_.read_failed(some_link(), failure(), now_); break;
        case 12: core_.handshaking(some_link(), now_); break;
        case 13: // early, or not
            armed_ = clock_type::time_point::max();
            core_.timer_fired(now_);
            break;
        default: pass_time(); break;
        }
        drain();
    }

    void send()
    {
        const std::uint64_t id = next_id_++;
        // Now and then an MSH-10 already used: the window must keep the two apart.
        std::string cid = !sends_.empty() && in_.ConsumeIntegralInRange<int>(0, 7) == 0
                              ? sends_.rbegin()->second.control_id
                              : "C" + std::to_string(id);
        sends_[id] = send_record{.control_id = cid, .queued_at = now_};
        core_.send(id, std::move(cid), now_);
    }

    void cancel()
    {
        if (sends_.empty())
            return;
        const std::uint64_t id = in_.ConsumeIntegralInRange<std::uint64_t>(1, next_id_ - 1);
        core_.cancel(id, in_.ConsumeBool(), now_);
    }

    void written()
    {
        const bool ok = in_.ConsumeIntegralInRange<int>(0, 5) != 0;
        const std::uint64_t link = in_.ConsumeIntegralInRange<int>(0, 7) == 0 ? stale_link() : writing_link_;
        if (link == writing_link_ && writing_) {
            if (ok)
                sends_[*writing_].wrote_whole = true;
            writing_.reset();
        }
        core_.written(link, ok ? boost::system::error_code() : make_error_code(asio_error::broken_pipe), now_);
    }

    void receive()
    {
        std::string bytes;
        const int what = in_.ConsumeIntegralInRange<int>(0, 9);
        if (what < 7 && !sends_.empty()) {
            // The ACK of some send: in flight, finished or queued, with any code.
            auto it = sends_.lower_bound(in_.ConsumeIntegralInRange<std::uint64_t>(1, next_id_ - 1));
            if (it == sends_.end())
                it = std::prev(sends_.end());
            static constexpr const char* codes[] = {"AA", "AE", "AR", "CA", "CE", "CR", "XX", ""};
            bytes = ack_frame(it->second.control_id, codes[in_.ConsumeIntegralInRange<int>(0, 7)]);
            if (in_.ConsumeIntegralInRange<int>(0, 5) == 0)
                bytes += bytes; // repeated
        } else if (what == 7) {
            bytes = ack_frame("UNKNOWN", "AA");
        } else {
            bytes = in_.ConsumeRandomLengthString(300); // garbage, partial frames, block bytes
        }
        const std::uint64_t link = in_.ConsumeIntegralInRange<int>(0, 7) == 0 ? stale_link() : current_link_;
        const std::size_t cut = in_.ConsumeIntegralInRange<std::size_t>(0, bytes.size());
        core_.received(link, std::string_view(bytes).substr(0, cut), now_);
        drain();
        core_.received(link, std::string_view(bytes).substr(cut), now_);
    }

    void pass_time()
    {
        now_ += std::chrono::milliseconds(in_.ConsumeIntegralInRange<int>(0, 2500));
        if (now_ >= armed_) {
            armed_ = clock_type::time_point::max(); // it fired
            core_.timer_fired(now_);
        }
    }

    boost::system::error_code failure()
    {
        switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
        case 0: return asio_error::eof;
        case 1: return asio_error::connection_reset;
        case 2: return hl7::errc::tls_untrusted_certificate;
        case 3: return asio_error::connection_refused;
        default: return asio_error::operation_aborted;
        }
    }

    std::uint64_t stale_link() { return current_link_ > 1 ? current_link_ - 1 : current_link_ + 1000; }
    std::uint64_t some_link() { return in_.ConsumeIntegralInRange<int>(0, 5) == 0 ? stale_link() : current_link_; }

    void drain()
    {
        action a;
        while (core_.next(a)) {
            switch (a.what()) {
            case action::kind::connect: current_link_ = a.link(); break;
            case action::kind::write: on_write(a); break;
            case action::kind::complete: on_complete(a); break;
            case action::kind::arm_timer: armed_ = a.deadline(); break;
            case action::kind::notify:
                if (a.event().what == hl7::connection_event::kind::reconnect_scheduled) {
                    // Backoff, jitter included, within [0, max].
                    check(a.event().delay >= clock_type::duration::zero());
                    check(a.event().delay <= options_.reconnect.max);
                }
                break;
            case action::kind::close_socket:
                if (a.link() == writing_link_)
                    writing_.reset(); // its write's report will be stale
                break;
            default: break;
            }
        }
        check_state();
    }

    void on_write(const action& a)
    {
        check(!closing_);                                // nothing written once close was asked for
        check(!(writing_ && writing_link_ == a.link())); // one write at a time
        auto it = sends_.find(a.id());
        check(it != sends_.end());
        check(it->second.completions == 0); // only a send still pending
        check(!it->second.write_started);   // written at most once
        it->second.write_started = now_;
        it->second.link = a.link();
        writing_ = a.id();
        writing_link_ = a.link();
        current_link_ = a.link();
    }

    void on_complete(const action& a)
    {
        auto it = sends_.find(a.id());
        check(it != sends_.end());
        send_record& s = it->second;
        check(++s.completions == 1);
        ++completed_;
        if (!a.error()) {
            check(s.wrote_whole); // never before its whole frame was written
            check(a.ack().control_id() == s.control_id);
        }
    }

    void check_state()
    {
        check(core_.in_flight() <= std::max<std::size_t>(1, options_.max_in_flight));
        check(core_.armed() == armed_);
        check(armed_ <= core_.earliest_deadline());
        const bool released = core_.state() == hl7::connection_state::closed || core_.state() == hl7::connection_state::failed;
        for (const auto& [id, s] : sends_) {
            if (s.completions != 0 || released)
                continue;
            if (!s.write_started && options_.queue_timeout.count() > 0)
                check(armed_ <= s.queued_at + options_.queue_timeout);
            if (s.write_started && s.link == current_link_)
                check(armed_ <= *s.write_started + options_.ack_timeout);
        }
        const auto c = counters_.snapshot();
        check(c.acknowledged + c.rejected + c.timed_out + c.failed == completed_);
        check(c.queued == core_.queued());
    }

    FuzzedDataProvider& in_;
    hl7::connection_options options_;
    hl7::detail::counter_block counters_;
    hl7::detail::status_block status_;
    hl7::detail::connection_core core_;
    clock_type::time_point now_ = clock_type::time_point{} + 1h;
    clock_type::time_point armed_ = clock_type::time_point::max();
    std::uint64_t current_link_ = 0;
    std::optional<std::uint64_t> writing_;
    std::uint64_t writing_link_ = 0;
    std::uint64_t next_id_ = 1;
    std::uint64_t completed_ = 0;
    bool closing_ = false;
    std::map<std::uint64_t, send_record> sends_;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    FuzzedDataProvider in(data, size);
    hl7::connection_options o;
    o.max_in_flight = in.ConsumeIntegralInRange<std::size_t>(1, 5);
    o.queue_limit = in.ConsumeBool() ? 4 : 64;
    o.queue_timeout = in.ConsumeBool() ? 1500ms : 0ms;
    o.ack_timeout = 1000ms;
    o.connect_timeout = 500ms;
    o.max_frame = 256;
    o.reconnect = {.max_attempts = in.ConsumeBool() ? 3u : 0u, .initial = 100ms, .max = 400ms, .factor = 2.0,
                   .jitter = 0.5};
    o.lazy = in.ConsumeBool();
    if (in.ConsumeBool())
        o.observer = [](const hl7::connection_event&) {};
    if (in.ConsumeBool())
        o.receive_hook = [](std::string_view payload) {
            if (payload.size() % 7 == 0)
                throw std::runtime_error("hook");
            return std::string(payload);
        };
    if (in.ConsumeBool())
        o.tls = hl7::tls_client_options{.handshake_timeout = 300ms};
    driver(in, o).run();
    return 0;
}
