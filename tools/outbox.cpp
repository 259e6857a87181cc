// hl7 outbox: deliver what an outbox holds (run), store messages without sending them
// (enqueue), and look after it (status, list, retry, purge). The connection runs on an
// io_context in a thread of its own; the commands wait for it on the main thread.
#include "client_flags.hpp"
#include "commands.hpp"
#include "input.hpp"
#include "metrics.hpp"
#include "outbox_common.hpp"
#include "output.hpp"

#include <hl7/model/path.hpp>
#include <hl7/net/host.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <array>
#include <csignal>
#include <cstdio>
#include <future>
#include <map>
#include <mutex>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

struct run_options {
    outbox_flags outbox;
    client_flags client;
    retry_flags retry;
    bool until_empty = false;
    bool json = false;
    std::string metrics; ///< HOST:PORT of the Prometheus endpoint; empty: none
};

// What `outbox run --metrics` serves: the outbox's counts (refreshed every few seconds and
// after outcomes, since a scrape cannot wait for the store) and what this process did.
class run_metrics {
public:
    void on(const outbox_event& e)
    {
        std::lock_guard lock(mutex_);
        switch (e.what) {
        case outbox_event::kind::committing:
            ++commits_;
            changes_ += e.count;
            break;
        case outbox_event::kind::written: ++sent_[e.possible_duplicate ? 1 : 0]; break;
        case outbox_event::kind::outcome: ++outcomes_[static_cast<std::size_t>(e.state)]; break;
        case outbox_event::kind::retry_scheduled: ++retries_; break;
        default: break;
        }
    }

    void counts(std::vector<outbox_lane_status> lanes)
    {
        std::lock_guard lock(mutex_);
        lanes_ = std::move(lanes);
        counted_ = outbox_clock::now();
    }

    std::string text() const
    {
        std::lock_guard lock(mutex_);
        exposition e;
        const auto now = outbox_clock::now();
        e.family("hl7_outbox_messages", "gauge", "Messages in the outbox, by destination, lane and state");
        for (const auto& l : lanes_) {
            const std::string lane = std::to_string(l.lane);
            const std::pair<outbox_state, std::uint64_t> by_state[] = {
                {outbox_state::queued, l.queued},       {outbox_state::written, l.written},
                {outbox_state::acknowledged, l.acknowledged}, {outbox_state::rejected, l.rejected},
                {outbox_state::failed, l.failed}};
            for (const auto& [state, n] : by_state)
                e.sample("hl7_outbox_messages", static_cast<double>(n),
                         {{"destination", l.destination}, {"lane", lane}, {"state", to_string(state)}});
        }
        e.family("hl7_outbox_possible_duplicates", "gauge", "Messages flagged as possible duplicates");
        for (const auto& l : lanes_)
            e.sample("hl7_outbox_possible_duplicates", static_cast<double>(l.possible_duplicates),
                     {{"destination", l.destination}, {"lane", std::to_string(l.lane)}});
        e.family("hl7_outbox_oldest_pending_seconds", "gauge",
                 "Age of the oldest message not final yet (0 when there is none)");
        for (const auto& l : lanes_)
            e.sample("hl7_outbox_oldest_pending_seconds",
                     l.oldest_pending ? std::chrono::duration<double>(now - *l.oldest_pending).count() : 0.0,
                     {{"destination", l.destination}, {"lane", std::to_string(l.lane)}});
        e.family("hl7_outbox_counts_age_seconds", "gauge", "How old the counts above are");
        e.sample("hl7_outbox_counts_age_seconds", std::chrono::duration<double>(now - counted_).count());
        e.family("hl7_outbox_outcomes_total", "counter", "Messages this process recorded final, by state");
        for (outbox_state s : {outbox_state::acknowledged, outbox_state::rejected, outbox_state::failed})
            e.sample("hl7_outbox_outcomes_total", static_cast<double>(outcomes_[static_cast<std::size_t>(s)]),
                     {{"state", to_string(s)}});
        e.family("hl7_outbox_sent_total", "counter", "Messages this process handed to a connection");
        e.sample("hl7_outbox_sent_total", static_cast<double>(sent_[0]), {{"possible_duplicate", "false"}});
        e.sample("hl7_outbox_sent_total", static_cast<double>(sent_[1]), {{"possible_duplicate", "true"}});
        e.family("hl7_outbox_retries_total", "counter", "Failed sendings that will be tried again");
        e.sample("hl7_outbox_retries_total", static_cast<double>(retries_));
        e.family("hl7_outbox_commits_total", "counter", "Group commits made");
        e.sample("hl7_outbox_commits_total", static_cast<double>(commits_));
        e.family("hl7_outbox_committed_changes_total", "counter", "Operations those commits made durable");
        e.sample("hl7_outbox_committed_changes_total", static_cast<double>(changes_));
        return e.text();
    }

private:
    mutable std::mutex mutex_;
    std::vector<outbox_lane_status> lanes_;
    outbox_clock::time_point counted_ = outbox_clock::now();
    std::array<std::uint64_t, 5> outcomes_{};
    std::array<std::uint64_t, 2> sent_{};
    std::uint64_t retries_ = 0, commits_ = 0, changes_ = 0;
};

// Refreshes the counts every `period`, and soon after an outcome.
class counts_refresher : public std::enable_shared_from_this<counts_refresher> {
public:
    counts_refresher(asio::io_context& ctx, outbox& box, run_metrics& m) : timer_(ctx), box_(box), metrics_(m) {}

    void start() { refresh(); }
    void stop()
    {
        stopped_ = true;
        timer_.cancel();
    }

private:
    void refresh()
    {
        box_.async_status([self = shared_from_this()](error_code ec, std::vector<outbox_lane_status> lanes) {
            if (!ec)
                self->metrics_.counts(std::move(lanes));
            if (self->stopped_)
                return;
            self->timer_.expires_after(std::chrono::seconds(2));
            self->timer_.async_wait([self](error_code wait) {
                if (!wait && !self->stopped_)
                    self->refresh();
            });
        });
    }

    asio::steady_timer timer_;
    outbox& box_;
    run_metrics& metrics_;
    bool stopped_ = false;
};

struct enqueue_flags {
    outbox_flags outbox;
    std::string host = "127.0.0.1";
    int port = 0;
    std::string partition_key;
    unsigned lanes = 1;
    std::size_t max_frame = mllp::default_max_frame;
    bool json = false;
    std::vector<std::string> files;
};

struct status_flags {
    outbox_flags outbox;
    bool json = false;
};

struct list_flags {
    outbox_flags outbox;
    std::string state;
    bool json = false;
};

struct retry_options {
    outbox_flags outbox;
    std::vector<std::int64_t> ids;
    bool dead = false;
};

struct purge_flags {
    outbox_flags outbox;
    std::string final_before;
};

// Waits for an outbox operation; throws failure for its error.
template <class T, class Start>
T result_of(Start start, const std::string& path)
{
    auto [ec, v] = wait_for<T>(std::move(start));
    if (ec)
        throw failure(exit_failed, describe(ec) + " (outbox " + path + ")");
    return std::move(v);
}

std::string outcome_line(const outbox_event& e, bool json)
{
    if (json)
        return "{\"outbox_id\":" + std::to_string(e.id) + ",\"control_id\":" + json_string(e.control_id) +
               ",\"state\":" + json_string(to_string(e.state)) + ",\"attempts\":" + std::to_string(e.attempts) +
               ",\"possible_duplicate\":" + (e.possible_duplicate ? "true" : "false") + "}\n";
    return std::to_string(e.id) + ' ' + std::string(e.control_id) + ' ' + std::string(to_string(e.state)) + ' ' +
           std::to_string(e.attempts) + (e.possible_duplicate ? " possible-duplicate" : "") + '\n';
}

int run_run(const run_options& o)
{
    outbox_run_options ro;
    ro.connection = o.client.options();
    ro.retry = o.retry.policy();
    ro.until_empty = o.until_empty;
    const auto pauses = pause_points::from_environment();
    ro.connection.observer = [pauses](const connection_event& e) { pauses->on(e); };
    const bool json = o.json;
    auto metrics = std::make_shared<run_metrics>();
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), false, [pauses, json, metrics](const outbox_event& e) {
        pauses->on(e);
        metrics->on(e);
        if (e.what == outbox_event::kind::outcome)
            write_stdout(outcome_line(e, json));
        // On a shared store a lane may stop without stopping the run: say so.
        if (e.what == outbox_event::kind::lane_stopped &&
            (e.error == outbox_errc::lease_lost || e.error == outbox_errc::store_unavailable)) {
            std::fprintf(stderr, "hl7: lane %u: %s (lease token %llu); trying again later\n", e.lane,
                         e.error.message().c_str(), static_cast<unsigned long long>(e.token));
            std::fflush(stderr);
        }
    });
    const outbox_destination to{.host = o.client.host, .port = static_cast<std::uint16_t>(o.client.port)};
    std::optional<metrics_endpoint> endpoint;
    std::shared_ptr<counts_refresher> refresher;
    if (!o.metrics.empty()) {
        endpoint.emplace(serve_metrics(ctx.get_executor(), o.metrics, [metrics] { return metrics->text(); }));
        std::fprintf(stderr, "hl7: metrics at http://%s/metrics\n", host_port(endpoint->local_endpoint()).c_str());
        refresher = std::make_shared<counts_refresher>(ctx, box, *metrics);
        refresher->start();
    }
    asio::signal_set signals(ctx, SIGTERM, SIGINT);
    asio::cancellation_signal stop;
    signals.async_wait([&stop](error_code ec, int) {
        if (!ec)
            stop.emit(asio::cancellation_type::terminal);
    });
    std::promise<error_code> done;
    auto finished = done.get_future();
    box.async_run(to, ro, asio::bind_cancellation_slot(stop.slot(), [&done](error_code ec) { done.set_value(ec); }));
    io_thread io(ctx);
    const error_code ec = finished.get();
    if (refresher)
        asio::post(ctx, [refresher, &endpoint] {
            refresher->stop();
            endpoint->stop();
        });
    box.async_close(asio::use_future).get();
    if (ec && ec != asio::error::operation_aborted)
        throw failure(exit_failed, describe(ec) + " (outbox " + o.outbox.path + ")");
    return exit_ok;
}

int run_enqueue(const enqueue_flags& o)
{
    if (o.port < 1 || o.port > 65535)
        throw failure(exit_usage, "invalid port '" + std::to_string(o.port) + "': not in 1-65535");
    if (!parse_host(o.host))
        throw failure(exit_usage, "invalid host '" + o.host + "'");
    if (o.lanes < 1 || o.lanes > 1024)
        throw failure(exit_usage, "invalid --lanes '" + std::to_string(o.lanes) + "': not in 1-1024");
    if (!o.partition_key.empty() && !path::parse(o.partition_key))
        throw failure(exit_usage, "invalid --partition-key '" + o.partition_key + "'");
    if (o.partition_key.empty() && o.lanes > 1)
        throw failure(exit_usage, "--lanes needs --partition-key");
    message_reader reader(o.files, o.max_frame);
    const auto pauses = pause_points::from_environment();
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), false, [pauses](const outbox_event& e) { pauses->on(e); });
    io_thread io(ctx);
    const outbox_destination to{.host = o.host, .port = static_cast<std::uint16_t>(o.port)};
    std::size_t count = 0, refused = 0;
    store_input(box, to, {.partition_key = o.partition_key, .lanes = o.lanes}, reader, o.outbox.path,
                [&](std::size_t index, const stored_message& m) {
                    ++count;
                    refused += m.id == 0;
                    const std::string n = std::to_string(index + 1);
                    if (o.json) {
                        const bool stored = m.id != 0;
                        write_stdout("{\"index\":" + n + ",\"outbox_id\":" + (stored ? std::to_string(m.id) : "null") +
                                     ",\"control_id\":" + (m.control_id ? json_string(*m.control_id) : "null") +
                                     ",\"lane\":" + (stored ? std::to_string(m.lane) : "null") +
                                     ",\"state\":" + (stored ? json_string(to_string(m.state)) : "null") +
                                     ",\"duplicate\":" + (m.duplicate ? "true" : "false") +
                                     ",\"error\":" + (stored ? "null" : json_string(m.error)) + "}\n");
                    } else if (m.id != 0) {
                        write_stdout(n + ' ' + std::to_string(m.id) + ' ' + *m.control_id + ' ' + std::to_string(m.lane) +
                                     ' ' + std::string(to_string(m.state)) + (m.duplicate ? " duplicate" : "") + '\n');
                    } else {
                        write_stdout(n + " - " + m.control_id.value_or("-") + " - - " + m.error + '\n');
                    }
                });
    box.async_close(asio::use_future).get();
    if (count == 0)
        std::fputs("hl7: no messages in the input\n", stderr);
    return refused == 0 ? exit_ok : exit_failed;
}

int run_status(const status_flags& o)
{
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), true);
    io_thread io(ctx);
    const auto lanes = result_of<std::vector<outbox_lane_status>>([&](auto h) { box.async_status(std::move(h)); },
                                                                  o.outbox.path);
    box.async_close(asio::use_future).get();
    const auto now = outbox_clock::now();
    auto age = [&](const std::optional<outbox_clock::time_point>& t) -> std::optional<double> {
        if (!t)
            return std::nullopt;
        return std::max(0.0, std::chrono::duration<double>(now - *t).count());
    };
    if (!o.json)
        write_stdout("DESTINATION LANE QUEUED WRITTEN ACKNOWLEDGED REJECTED FAILED DUPLICATES OLDEST LEASE\n");
    for (const outbox_lane_status& s : lanes) {
        const auto oldest = age(s.oldest_pending);
        char seconds[32] = "-";
        if (oldest)
            std::snprintf(seconds, sizeof seconds, "%.1fs", *oldest);
        const bool held = !s.lease_owner.empty() && s.lease_expires && *s.lease_expires > now;
        if (o.json) {
            write_stdout("{\"destination\":" + json_string(s.destination) + ",\"lane\":" + std::to_string(s.lane) +
                         ",\"queued\":" + std::to_string(s.queued) + ",\"written\":" + std::to_string(s.written) +
                         ",\"acknowledged\":" + std::to_string(s.acknowledged) + ",\"rejected\":" +
                         std::to_string(s.rejected) + ",\"failed\":" + std::to_string(s.failed) +
                         ",\"possible_duplicates\":" + std::to_string(s.possible_duplicates) +
                         ",\"oldest_pending_ms\":" +
                         (oldest ? std::to_string(static_cast<std::int64_t>(*oldest * 1000)) : "null") +
                         ",\"lease_owner\":" + (s.lease_owner.empty() ? "null" : json_string(s.lease_owner)) +
                         ",\"lease_expires\":" + (s.lease_expires ? json_string(iso8601(*s.lease_expires)) : "null") +
                         ",\"lease_held\":" + (held ? "true" : "false") + ",\"lease_token\":" +
                         std::to_string(s.lease_token) + "}\n");
        } else {
            std::string lease = "-";
            if (!s.lease_owner.empty())
                lease = s.lease_owner + (held ? " until " : " expired ") +
                        (s.lease_expires ? iso8601(*s.lease_expires) : std::string("-"));
            write_stdout(s.destination + ' ' + std::to_string(s.lane) + ' ' + std::to_string(s.queued) + ' ' +
                         std::to_string(s.written) + ' ' + std::to_string(s.acknowledged) + ' ' +
                         std::to_string(s.rejected) + ' ' + std::to_string(s.failed) + ' ' +
                         std::to_string(s.possible_duplicates) + ' ' + seconds + ' ' + lease + '\n');
        }
    }
    return exit_ok;
}

std::vector<outbox_state> states_named(const std::string& name)
{
    if (name.empty() || name == "all")
        return {};
    if (name == "pending")
        return {outbox_state::queued, outbox_state::written};
    if (name == "dead")
        return {outbox_state::rejected, outbox_state::failed};
    if (auto s = parse_outbox_state(name))
        return {*s};
    throw failure(exit_usage, "invalid --state '" + name +
                                  "': queued, written, acknowledged, rejected, failed, pending, dead or all");
}

int run_list(const list_flags& o)
{
    const std::vector<outbox_state> states = states_named(o.state);
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), true);
    io_thread io(ctx);
    // Who delivers each lane now: a pending message is in that instance's hands.
    std::map<std::pair<std::string, std::uint32_t>, std::string> holders;
    const auto now = outbox_clock::now();
    for (const outbox_lane_status& s :
         result_of<std::vector<outbox_lane_status>>([&](auto h) { box.async_status(std::move(h)); }, o.outbox.path))
        if (!s.lease_owner.empty() && s.lease_expires && *s.lease_expires > now)
            holders[{s.destination, s.lane}] = s.lease_owner;
    std::int64_t after = 0;
    for (;;) {
        const auto page = result_of<std::vector<outbox_record>>(
            [&](auto h) { box.async_list({.states = states, .after_id = after, .limit = 1000}, std::move(h)); },
            o.outbox.path);
        for (const outbox_record& r : page) {
            std::string line = o.json ? record_json(r) : record_text(r);
            if (auto it = holders.find({r.destination, r.lane}); it != holders.end() && !is_final(r.state)) {
                line.pop_back(); // the newline, and for JSON the closing brace
                if (o.json)
                    line.pop_back();
                line += o.json ? ",\"lease_owner\":" + json_string(it->second) + "}\n" : " lease " + it->second + "\n";
            }
            write_stdout(line);
        }
        if (page.size() < 1000)
            break;
        after = page.back().id;
    }
    box.async_close(asio::use_future).get();
    return exit_ok;
}

int run_retry(const retry_options& o)
{
    if (o.dead == !o.ids.empty())
        throw failure(exit_usage, "give the ids of the messages to retry, or --dead for every dead letter");
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), true);
    io_thread io(ctx);
    int status = exit_ok;
    std::uint64_t n = 0;
    if (o.dead) {
        n = result_of<std::uint64_t>([&](auto h) { box.async_retry_dead(std::move(h)); }, o.outbox.path);
    } else {
        std::vector<std::int64_t> dead;
        for (std::int64_t id : o.ids) {
            auto [ec, r] = wait_for<outbox_record>([&](auto h) { box.async_get(id, std::move(h)); });
            if (ec == outbox_errc::not_found) {
                std::fprintf(stderr, "hl7: no message %lld in the outbox\n", static_cast<long long>(id));
                status = exit_failed;
            } else if (ec) {
                throw failure(exit_failed, describe(ec) + " (outbox " + o.outbox.path + ")");
            } else if (!is_dead(r.state)) {
                std::fprintf(stderr, "hl7: message %lld is %s, not a dead letter\n", static_cast<long long>(id),
                             std::string(to_string(r.state)).c_str());
                status = exit_failed;
            } else {
                dead.push_back(id);
            }
        }
        if (!dead.empty())
            n = result_of<std::uint64_t>([&](auto h) { box.async_retry(dead, std::move(h)); }, o.outbox.path);
    }
    box.async_close(asio::use_future).get();
    write_stdout("queued again: " + std::to_string(n) + "\n");
    return status;
}

int run_purge(const purge_flags& o)
{
    const auto before = parse_time(o.final_before, outbox_clock::now());
    if (!before)
        throw failure(exit_usage, "invalid --final-before '" + o.final_before +
                                      "': an ISO 8601 date or time (2024-05-01, 2024-05-01T12:00:00Z) or a duration "
                                      "(7d, 12h, 30m)");
    asio::io_context ctx;
    outbox box = o.outbox.open(ctx.get_executor(), true);
    io_thread io(ctx);
    const auto n =
        result_of<std::uint64_t>([&](auto h) { box.async_purge(*before, std::move(h)); }, o.outbox.path);
    box.async_close(asio::use_future).get();
    write_stdout("purged: " + std::to_string(n) + " (final before " + iso8601(*before) + ")\n");
    return exit_ok;
}

} // namespace

command define_outbox(CLI::App& app)
{
    CLI::App* box = app.add_subcommand("outbox", "Deliver and look after a durable outbox");
    box->require_subcommand(1);
    box->footer("Messages are stored before they are sent and their outcomes recorded. A message may reach the\n"
                "destination twice only after a crash, an ACK timeout or a lost link while it was written and not\n"
                "acknowledged; it is then sent again with the same bytes and MSH-10 and flagged possible-duplicate.");

    auto run = std::make_shared<run_options>();
    CLI::App* r = box->add_subcommand("run", "Deliver what is pending for a destination until SIGTERM or SIGINT");
    r->footer("One line per message that becomes final: <outbox id> <MSH-10> <state> <attempts> [possible-duplicate].\n"
              "Failures are retried with a backoff, without end unless --max-attempts or --max-age say otherwise.\n"
              "Exit status: 0 when stopped by a signal (or, with --until-empty, once nothing is pending), 1 for an\n"
              "error (another process delivering from the outbox, the outbox failing), 2 for a usage error.");
    run->outbox.define(*r, true, true);
    run->outbox.define_lease(*r);
    run->client.define(*r);
    run->retry.define(*r);
    r->add_flag("--until-empty", run->until_empty, "Stop once nothing is pending for the destination");
    r->add_flag("--json", run->json, "One JSON object per line: outbox_id, control_id, state, attempts, possible_duplicate");
    r->add_option("--metrics", run->metrics,
                  "Serve Prometheus metrics at http://HOST:PORT/metrics (counts by lane and state, the oldest "
                  "pending message, outcomes, retries, commits); port 0 picks one, named on standard error")
        ->type_name("HOST:PORT");

    auto enq = std::make_shared<enqueue_flags>();
    CLI::App* e = box->add_subcommand("enqueue", "Store messages for a destination without sending them");
    e->footer("One line per message: <n> <outbox id> <MSH-10> <lane> <state> [duplicate], or <n> - <MSH-10> - - <error>.\n"
              "A message already in the outbox (same destination, MSH-10 and bytes) is not stored again.\n"
              "Exit status: 0 when every message is stored, 1 otherwise, 2 for a usage error.");
    enq->outbox.define(*e, true, true);
    e->add_option("--host", enq->host, "Destination: IPv4 address, IPv6 address or DNS name")
        ->type_name("HOST")
        ->capture_default_str();
    e->add_option("--port,-p", enq->port, "Destination port (1-65535)")->type_name("PORT")->required();
    e->add_option("--partition-key", enq->partition_key,
                  "Path whose value picks the lane (e.g. PID.3.1): messages with the same value keep their order")
        ->type_name("PATH");
    e->add_option("--lanes", enq->lanes, "Lanes of the destination (1-1024), each delivered over its own connection")
        ->type_name("N")
        ->capture_default_str();
    e->add_option("--max-frame", enq->max_frame, "Largest message")->type_name("BYTES")->capture_default_str();
    e->add_flag("--json", enq->json, "One JSON object per line: index, outbox_id, control_id, lane, state, duplicate, error");
    e->add_option("FILE", enq->files, "Files of messages; none or '-': standard input (as hl7 send reads them)")
        ->type_name("");

    auto st = std::make_shared<status_flags>();
    CLI::App* s = box->add_subcommand("status", "Counts by destination, lane and state, and who delivers each lane");
    s->footer("Columns: destination, lane, queued, written, acknowledged, rejected, failed, possible duplicates,\n"
              "the age of the oldest pending message, and the lease (its holder and until when).");
    st->outbox.define(*s, true, false);
    s->add_flag("--json", st->json,
                "One JSON object per lane: destination, lane, queued, written, acknowledged, rejected, failed, "
                "possible_duplicates, oldest_pending_ms, lease_owner, lease_expires, lease_held, lease_token");

    auto ls = std::make_shared<list_flags>();
    CLI::App* l = box->add_subcommand("list", "List messages, by outbox id");
    l->footer("One line per message: <id> <destination> <lane> <MSH-10> <state> <attempts> <MSA-1> <enqueued at>\n"
              "[possible-duplicate] [error] [lease <instance>]: a pending message whose lane an instance holds the\n"
              "lease of names it (JSON: lease_owner).");
    ls->outbox.define(*l, true, false);
    l->add_option("--state", ls->state,
                  "queued, written, acknowledged, rejected, failed, pending (queued or written), dead (rejected or "
                  "failed) or all")
        ->type_name("STATE");
    l->add_flag("--json", ls->json, "One JSON object per line");

    auto rt = std::make_shared<retry_options>();
    CLI::App* t = box->add_subcommand("retry", "Queue dead letters (rejected or failed messages) again");
    rt->outbox.define(*t, true, false);
    t->add_option("ID", rt->ids, "Outbox ids of the dead letters to queue again")->type_name("");
    t->add_flag("--dead", rt->dead, "Every dead letter of the outbox");

    auto pg = std::make_shared<purge_flags>();
    CLI::App* p = box->add_subcommand("purge", "Delete messages that became final before a time");
    pg->outbox.define(*p, true, false);
    p->add_option("--final-before", pg->final_before,
                  "An ISO 8601 date or time in UTC unless an offset is given (2024-05-01, 2024-05-01T12:00:00Z, "
                  "2024-05-01T14:00:00+02:00), or a duration before now (7d, 12h, 30m, 90s)")
        ->type_name("TIME")
        ->required();

    return {box, [=] {
                if (r->parsed())
                    return run_run(*run);
                if (e->parsed())
                    return run_enqueue(*enq);
                if (s->parsed())
                    return run_status(*st);
                if (l->parsed())
                    return run_list(*ls);
                if (t->parsed())
                    return run_retry(*rt);
                return run_purge(*pg);
            }};
}

} // namespace hl7::tool
