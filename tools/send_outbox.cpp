#include "send_outbox.hpp"

#include "input.hpp"
#include "output.hpp"
#include "report.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <deque>
#include <future>
#include <mutex>
#include <unordered_map>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using error_code = boost::system::error_code;

// The connection giving up: sending the rest is pointless, as with hl7 send.
class give_up_watch {
public:
    void on(const connection_event& e)
    {
        if (e.what != connection_event::kind::gave_up)
            return;
        std::lock_guard lock(mutex_);
        given_up_ = true;
        error_ = e.error;
        attempts_ = e.attempt;
    }

    std::optional<std::string> why(const std::string& peer) const
    {
        std::lock_guard lock(mutex_);
        if (!given_up_)
            return std::nullopt;
        return "gave up after " + std::to_string(attempts_) + " connection attempt" + (attempts_ == 1 ? "" : "s") + ": " +
               describe(error_ ? error_ : make_error_code(errc::not_connected)) + " (" + peer + ")";
    }

private:
    mutable std::mutex mutex_;
    bool given_up_ = false;
    error_code error_;
    std::uint32_t attempts_ = 0;
};

result result_of(const outbox_record& r, std::size_t index)
{
    result out;
    out.index = index;
    out.control_id = r.control_id;
    if (r.code) {
        out.ack_code = std::string(to_string(*r.code));
        out.ack_control_id = r.control_id; // the connection takes only the ACK whose MSA-2 is the MSH-10
        out.round_trip = r.round_trip;
    }
    out.accepted = r.state == outbox_state::acknowledged;
    out.error = outcome_error(r);
    return out;
}

std::string extra_json(const outbox_record* r)
{
    if (r == nullptr)
        return ",\"outbox_id\":null,\"state\":null,\"possible_duplicate\":false";
    return ",\"outbox_id\":" + std::to_string(r->id) + ",\"state\":" + json_string(to_string(r->state)) +
           ",\"possible_duplicate\":" + (r->possible_duplicate ? "true" : "false");
}

} // namespace

void send_outbox_flags::define(CLI::App& send)
{
    outbox.define(send, false, true);
    retry.define(send);
}

int run_send_outbox(const send_outbox_flags& flags, const client_flags& client, bool json,
                    const std::vector<std::string>& files)
{
    outbox_run_options run_options;
    run_options.connection = client.options();
    run_options.connection.queue_timeout = 0ms; // the wait for a connection is bounded by the retries instead
    run_options.retry = flags.retry.policy();
    message_reader reader(files, client.max_frame);
    const auto pauses = pause_points::from_environment();
    const auto watch = std::make_shared<give_up_watch>();
    run_options.connection.observer = [pauses, watch](const connection_event& e) {
        pauses->on(e);
        watch->on(e);
    };
    const std::string& path = flags.outbox.path;
    const std::string peer = client.peer();
    const outbox_destination to{.host = client.host, .port = static_cast<std::uint16_t>(client.port)};

    asio::io_context ctx;
    outbox box = flags.outbox.open(ctx.get_executor(), false, [pauses](const outbox_event& e) { pauses->on(e); });
    io_thread io(ctx);
    auto store_failed = [&](const error_code& ec) {
        return failure(exit_failed, describe(ec) + " (outbox " + path + ")");
    };

    // Outcomes recorded from now on come through the stream; earlier ones are read by id.
    const auto latest = wait_for<std::uint64_t>([&](auto h) { box.async_latest_outcome(std::move(h)); });
    if (std::get<0>(latest))
        throw store_failed(std::get<0>(latest));
    std::uint64_t cursor = std::get<1>(latest);

    std::deque<stored_message> items;
    store_input(box, to, {}, reader, path, [&](std::size_t, const stored_message& m) { items.push_back(m); });

    // Ids not reported yet, and outcomes that came through the stream before their turn.
    std::unordered_map<std::int64_t, std::size_t> waiting;
    for (const stored_message& it : items)
        if (it.id != 0)
            ++waiting[it.id];
    std::unordered_map<std::int64_t, outbox_record> arrived;

    asio::cancellation_signal stop_run;
    std::optional<std::future<error_code>> run_done;
    std::optional<std::future<std::tuple<error_code, outbox_record>>> next;
    auto ask_next = [&] {
        std::promise<std::tuple<error_code, outbox_record>> p;
        next = p.get_future();
        box.async_next_outcome(cursor, [p = std::move(p)](error_code ec, outbox_record r) mutable {
            p.set_value({ec, std::move(r)});
        });
    };
    auto start_run = [&] {
        if (run_done)
            return;
        std::promise<error_code> done;
        run_done = done.get_future();
        box.async_run(to, run_options,
                      asio::bind_cancellation_slot(stop_run.slot(),
                                                   [done = std::move(done)](error_code ec) mutable { done.set_value(ec); }));
    };
    auto stop = [&] {
        if (!run_done)
            return;
        asio::post(ctx, [&] { stop_run.emit(asio::cancellation_type::terminal); });
        run_done->wait();
    };

    progress bar;
    std::size_t reported = 0, ok_count = 0, failed_count = 0;
    std::optional<std::string> fatal;
    for (std::size_t i = 0; i < items.size() && !fatal; ++i) {
        const stored_message& it = items[i];
        if (it.id == 0) {
            result r;
            r.index = i + 1;
            r.control_id = it.control_id;
            r.error = it.error;
            ++reported;
            ++failed_count;
            bar.print(json ? json_line(r, extra_json(nullptr)) : text_line(r));
            continue;
        }
        std::optional<outbox_record> rec;
        if (auto a = arrived.find(it.id); a != arrived.end()) {
            rec = a->second;
        } else {
            auto [gec, r] = wait_for<outbox_record>([&](auto h) { box.async_get(it.id, std::move(h)); });
            if (gec)
                throw store_failed(gec);
            rec = std::move(r);
        }
        while (!is_final(rec->state)) {
            start_run();
            if (!next)
                ask_next();
            if (next->wait_for(100ms) == std::future_status::ready) {
                auto [nec, o] = next->get();
                next.reset();
                if (nec)
                    throw store_failed(nec);
                cursor = o.outcome;
                if (o.id == it.id) {
                    rec = std::move(o);
                } else if (waiting.contains(o.id)) {
                    o.message.clear();
                    arrived[o.id] = std::move(o);
                }
                continue;
            }
            bar.tick(reported + 1, ok_count, failed_count);
            if (run_done->wait_for(0s) == std::future_status::ready) {
                const error_code ec = run_done->get();
                run_done.reset();
                fatal = describe(ec) + " (outbox " + path + ")";
                break;
            }
            if (auto why = watch->why(peer)) {
                fatal = *why;
                break;
            }
        }
        if (fatal)
            break;
        if (--waiting[it.id] == 0) {
            waiting.erase(it.id);
            arrived.erase(it.id);
        }
        result r = result_of(*rec, i + 1);
        if (!json && rec->possible_duplicate)
            r.error = r.error.empty() ? "possible duplicate" : r.error + " (possible duplicate)";
        ++reported;
        ++(r.accepted ? ok_count : failed_count);
        bar.print(json ? json_line(r, extra_json(&*rec)) : text_line(r));
        bar.tick(reported, ok_count, failed_count);
    }
    bar.finish();
    stop();
    box.async_close(asio::use_future).get();

    if (fatal) {
        const std::size_t left = items.size() - reported;
        throw failure(exit_failed, *fatal + "; " + std::to_string(left) + " message" + (left == 1 ? "" : "s") +
                                       " not final, kept in the outbox " + path);
    }
    if (items.empty())
        std::fputs("hl7: no messages in the input\n", stderr);
    return failed_count == 0 ? exit_ok : exit_failed;
}

} // namespace hl7::tool
