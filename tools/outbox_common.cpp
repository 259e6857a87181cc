#include "outbox_common.hpp"

#include "input.hpp"
#include "output.hpp"

#include <hl7/model/ack.hpp>

#include <cctype>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <thread>

#include <unistd.h>

namespace hl7::tool {

void outbox_flags::define(CLI::App& c, bool required, bool stores)
{
    auto* o = c.add_option("--outbox", path,
                           "The outbox: an SQLite file (created if missing, with <file>.lock beside it), or a "
                           "PostgreSQL database as a libpq URI, postgresql://... or postgres://... (shared by "
                           "several instances)")
                  ->type_name("PATH|URL");
    if (required)
        o->required();
    c.add_option("--schema", schema, "PostgreSQL: the schema of the outbox's tables (created if missing)")
        ->type_name("NAME")
        ->capture_default_str();
    if (stores)
        c.add_option("--synchronous", synchronous,
                     "full: each commit survives a power loss; normal: each commit survives a crash of the process, "
                     "the last ones may be lost with the power")
            ->type_name("full|normal")
            ->capture_default_str();
}

void outbox_flags::define_lease(CLI::App& c)
{
    c.add_option("--lease-ttl", lease_ttl,
                 "PostgreSQL: how long a lane's lease lasts without renewal (renewed every third of it); another "
                 "instance takes the lanes of one that died over once their leases expire")
        ->type_name("SECONDS")
        ->capture_default_str();
}

outbox outbox_flags::open(boost::asio::any_io_executor ex, bool must_exist,
                          std::function<void(const outbox_event&)> observer) const
{
    if (synchronous != "full" && synchronous != "normal")
        throw failure(exit_usage, "invalid --synchronous '" + synchronous + "': full or normal");
    if (path.empty())
        throw failure(exit_usage, "--outbox must name a file or a PostgreSQL URL");
    if (!(lease_ttl >= 0.003 && lease_ttl <= 86400.0 * 365))
        throw failure(exit_usage, "invalid --lease-ttl: a number of seconds, at least 0.003");
    const outbox_location where = parse_outbox_location(path);
    if (where.what == outbox_location::kind::sqlite && must_exist) {
        std::error_code ignored;
        if (!std::filesystem::exists(where.target, ignored))
            throw failure(exit_failed, "no outbox at " + path);
    }
    // A write past a file size limit then fails with a named error instead of killing us.
    std::signal(SIGXFSZ, SIG_IGN);
    auto box = outbox::open(std::move(ex), {.location = path,
                                            .synchronous = synchronous == "full" ? outbox_synchronous::full
                                                                                 : outbox_synchronous::normal,
                                            .lease_ttl = std::chrono::milliseconds(
                                                static_cast<std::int64_t>(lease_ttl * 1000.0)),
                                            .schema = schema,
                                            .observer = std::move(observer)});
    if (!box)
        throw failure(exit_failed, "cannot open the outbox " + path + ": " + describe(box.error()));
    return std::move(box).value();
}

void retry_flags::define(CLI::App& c)
{
    c.add_option("--max-attempts", max_attempts,
                 "Give a failing message up (a dead letter) after this many attempts; 0: never")
        ->type_name("N")
        ->capture_default_str();
    c.add_option("--max-age", max_age,
                 "Give a failing message up once it has been queued this long (e.g. 30m, 2h, 7d); default: never")
        ->type_name("DURATION");
}

outbox_retry_policy retry_flags::policy() const
{
    outbox_retry_policy p;
    p.max_attempts = max_attempts;
    if (!max_age.empty()) {
        const auto age = parse_duration(max_age);
        if (!age || age->count() <= 0)
            throw failure(exit_usage, "invalid --max-age '" + max_age + "': a duration such as 30m, 2h or 7d");
        p.max_age = *age;
    }
    return p;
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text)
{
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end == text.data())
        return std::nullopt;
    const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    std::uint64_t ms_per = 0;
    if (unit == "ms")
        ms_per = 1;
    else if (unit == "s")
        ms_per = 1000;
    else if (unit == "m")
        ms_per = 60'000;
    else if (unit == "h")
        ms_per = 3'600'000;
    else if (unit == "d")
        ms_per = 86'400'000;
    else if (unit == "w")
        ms_per = 604'800'000;
    else
        return std::nullopt;
    if (n > static_cast<std::uint64_t>(INT64_MAX) / ms_per / 2)
        return std::nullopt;
    return std::chrono::milliseconds(static_cast<std::int64_t>(n * ms_per));
}

namespace {

// Reads exactly `width` digits at `pos`.
bool digits(std::string_view s, std::size_t& pos, int width, int& out)
{
    if (pos + static_cast<std::size_t>(width) > s.size())
        return false;
    out = 0;
    for (int i = 0; i < width; ++i) {
        const char c = s[pos + static_cast<std::size_t>(i)];
        if (c < '0' || c > '9')
            return false;
        out = out * 10 + (c - '0');
    }
    pos += static_cast<std::size_t>(width);
    return true;
}

bool eat(std::string_view s, std::size_t& pos, char c)
{
    if (pos < s.size() && s[pos] == c) {
        ++pos;
        return true;
    }
    return false;
}

} // namespace

std::optional<outbox_clock::time_point> parse_time(std::string_view text, outbox_clock::time_point now)
{
    if (auto ago = parse_duration(text))
        return now - *ago;
    std::size_t pos = 0;
    int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
    if (!digits(text, pos, 4, year) || !eat(text, pos, '-') || !digits(text, pos, 2, month) || !eat(text, pos, '-') ||
        !digits(text, pos, 2, day))
        return std::nullopt;
    std::chrono::milliseconds fraction{0};
    std::chrono::minutes offset{0};
    if (pos < text.size()) {
        if (!eat(text, pos, 'T') && !eat(text, pos, ' '))
            return std::nullopt;
        if (!digits(text, pos, 2, hour) || !eat(text, pos, ':') || !digits(text, pos, 2, minute))
            return std::nullopt;
        if (eat(text, pos, ':')) {
            if (!digits(text, pos, 2, second))
                return std::nullopt;
            if (eat(text, pos, '.') || eat(text, pos, ',')) {
                int scale = 100, ms = 0, n = 0;
                while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
                    ms += (text[pos++] - '0') * scale;
                    scale /= 10;
                    ++n;
                }
                if (n == 0)
                    return std::nullopt;
                fraction = std::chrono::milliseconds(ms);
            }
        }
        if (eat(text, pos, 'Z')) {
        } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
            const int sign = text[pos++] == '+' ? 1 : -1;
            int oh = 0, om = 0;
            if (!digits(text, pos, 2, oh))
                return std::nullopt;
            eat(text, pos, ':');
            if (!digits(text, pos, 2, om))
                return std::nullopt;
            offset = std::chrono::minutes(sign * (oh * 60 + om));
        }
        if (pos != text.size())
            return std::nullopt;
    }
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
        return std::nullopt;
    std::tm tm{};
    tm.tm_year = year - 1900;
    tm.tm_mon = month - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = minute;
    tm.tm_sec = second;
    const std::time_t t = ::timegm(&tm);
    if (tm.tm_mday != day) // 31 February and the like roll over
        return std::nullopt;
    return outbox_clock::from_time_t(t) + fraction - offset;
}

std::string iso8601(outbox_clock::time_point t)
{
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(((ms % 1000) + 1000) % 1000));
    return buf;
}

std::string outcome_error(const outbox_record& r)
{
    if (r.state == outbox_state::acknowledged)
        return {};
    if (r.state == outbox_state::rejected && r.code) {
        // As hl7 send words it: the verdict, then what the peer said (stored as the verdict's
        // meaning when it said nothing).
        const boost::system::error_code verdict = hl7::verdict_of(*r.code) == verdict::reject
                                                      ? make_error_code(ack_errc::application_reject)
                                                      : make_error_code(ack_errc::application_error);
        return describe(verdict) + (r.error.empty() || r.error == verdict.message() ? "" : ": " + r.error);
    }
    return r.error;
}

std::string record_text(const outbox_record& r)
{
    std::string line = std::to_string(r.id) + ' ' + r.destination + ' ' + std::to_string(r.lane) + ' ' +
                       (r.control_id.empty() ? "-" : r.control_id) + ' ' + std::string(to_string(r.state)) + ' ' +
                       std::to_string(r.attempts) + ' ' + (r.code ? std::string(to_string(*r.code)) : "-") + ' ' +
                       iso8601(r.enqueued_at);
    if (r.possible_duplicate)
        line += " possible-duplicate";
    if (!r.error.empty())
        line += ' ' + r.error;
    return line + '\n';
}

std::string record_json(const outbox_record& r)
{
    auto time_or_null = [](const std::optional<outbox_clock::time_point>& t) {
        return t ? json_string(iso8601(*t)) : std::string("null");
    };
    return "{\"outbox_id\":" + std::to_string(r.id) + ",\"destination\":" + json_string(r.destination) +
           ",\"lane\":" + std::to_string(r.lane) + ",\"control_id\":" + json_string(r.control_id) +
           ",\"state\":" + json_string(to_string(r.state)) + ",\"attempts\":" + std::to_string(r.attempts) +
           ",\"possible_duplicate\":" + (r.possible_duplicate ? "true" : "false") +
           ",\"ack_code\":" + (r.code ? json_string(to_string(*r.code)) : "null") +
           ",\"enqueued_at\":" + json_string(iso8601(r.enqueued_at)) + ",\"written_at\":" + time_or_null(r.written_at) +
           ",\"finished_at\":" + time_or_null(r.finished_at) +
           ",\"error\":" + (r.error.empty() ? "null" : json_string(r.error)) + "}\n";
}

void store_input(outbox& box, const outbox_destination& to, const enqueue_options& options, message_reader& reader,
                 const std::string& path, const std::function<void(std::size_t index, const stored_message&)>& done)
{
    // Enqueues outstanding at once: enough for their commits to be shared.
    constexpr std::size_t window = 256;
    struct slot {
        stored_message m;
        bool complete = false;
    };
    std::deque<slot> slots; // from input index `first` on; references stay valid as it grows
    std::size_t first = 0;
    std::mutex mutex;
    std::condition_variable changed;
    std::size_t outstanding = 0;
    boost::system::error_code fatal;
    std::size_t fatal_index = 0;
    // Reports what is complete at the head, in order. Called with the lock held.
    auto report = [&] {
        while (!slots.empty() && slots.front().complete) {
            done(first, slots.front().m);
            slots.pop_front();
            ++first;
        }
    };
    auto settle = [&](std::unique_lock<std::mutex>& lock) {
        changed.wait(lock, [&] { return outstanding == 0; });
    };
    std::unique_lock lock(mutex);
    try {
        for (;;) {
            report();
            if (fatal)
                break;
            lock.unlock();
            std::optional<input_message> in = reader.next();
            lock.lock();
            if (!in)
                break;
            changed.wait(lock, [&] { return outstanding < window || fatal; });
            if (fatal)
                break;
            slot& s = slots.emplace_back();
            const std::size_t index = first + slots.size() - 1;
            s.complete = true;
            if (!in->error.empty()) {
                s.m.error = in->error;
                continue;
            }
            auto msg = message::parse(std::move(in->text));
            if (!msg) {
                s.m.error = "input message does not parse: " + describe(msg.error());
                continue;
            }
            if (!msg.value().control_id().empty())
                s.m.control_id = std::string(msg.value().control_id());
            s.complete = false;
            ++outstanding;
            lock.unlock();
            box.async_enqueue(to, std::move(msg).value(), options, [&, index](boost::system::error_code ec, enqueue_result r) {
                std::lock_guard guard(mutex);
                stored_message& m = slots[index - first].m;
                if (!ec) {
                    m.id = r.id;
                    m.lane = r.lane;
                    m.state = r.state;
                    m.duplicate = r.duplicate;
                } else {
                    m.error = describe(ec);
                    const bool this_message = ec == errc::missing_control_id || ec == outbox_errc::control_id_conflict ||
                                              ec == errc::invalid_path;
                    if (!this_message && !fatal) {
                        fatal = ec;
                        fatal_index = index;
                    }
                }
                slots[index - first].complete = true;
                --outstanding;
                changed.notify_all();
            });
            lock.lock();
        }
        settle(lock);
        report();
    } catch (...) {
        if (!lock.owns_lock())
            lock.lock();
        settle(lock); // the handlers refer to what is on this stack
        throw;
    }
    if (fatal)
        throw failure(exit_failed, "cannot store message " + std::to_string(fatal_index + 1) + " in the outbox " + path +
                                       ": " + describe(fatal) + " (the messages before it are stored)");
}

std::shared_ptr<pause_points> pause_points::from_environment()
{
    auto p = std::make_shared<pause_points>();
    const char* v = std::getenv("HL7_OUTBOX_PAUSE");
    if (v == nullptr)
        return p;
    const std::string_view text(v);
    const auto colon = text.rfind(':');
    std::uint64_t n = 0;
    if (colon == std::string_view::npos ||
        std::from_chars(text.data() + colon + 1, text.data() + text.size(), n).ec != std::errc() || n == 0)
        throw failure(exit_usage, "invalid HL7_OUTBOX_PAUSE '" + std::string(text) + "': <point>:<n>");
    p->point_ = std::string(text.substr(0, colon));
    p->at_ = n;
    return p;
}

void pause_points::reached(std::string_view point)
{
    if (at_ == 0 || point != point_)
        return;
    const std::uint64_t n = ++count_;
    if (n != at_)
        return;
    std::fprintf(stderr, "hl7: paused at %s %llu\n", point_.c_str(), static_cast<unsigned long long>(n));
    std::fflush(stderr);
    for (;;)
        ::pause();
}

void pause_points::on(const outbox_event& e)
{
    if (e.what == outbox_event::kind::committing)
        reached("committing");
    else if (e.what == outbox_event::kind::written)
        reached("written");
}

void pause_points::on(const connection_event& e)
{
    if (e.what == connection_event::kind::sent)
        reached("sent");
    else if (e.what == connection_event::kind::acknowledged)
        reached("acknowledged");
}

} // namespace hl7::tool
