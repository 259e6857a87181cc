#include "outbox/pg_store.hpp"

#include "net/pq_connection.hpp"

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <libpq-fe.h>

#include <cctype>
#include <iterator>
#include <list>
#include <map>
#include <random>
#include <set>
#include <tuple>

namespace hl7::detail {

namespace {

namespace asio = boost::asio;
using error_code = boost::system::error_code;
using params = std::vector<std::optional<std::string>>;

constexpr int schema_version = 1;

// The server's clock, in the milliseconds the records use: leases expire by it, so that the
// instances' clocks need not agree.
constexpr const char* server_ms = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

// Each migration takes the schema from the version before it to its own (index + 1).
// Message bytes, MSH-10s, ACKs and peers' error texts are bytea: HL7 is not always UTF-8.
constexpr const char* migrations[] = {
    "CREATE TABLE @.meta(key text PRIMARY KEY, value bigint NOT NULL);"
    "INSERT INTO @.meta VALUES('next_outcome', 1);"
    "CREATE TABLE @.messages("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " destination text NOT NULL,"
    " lane integer NOT NULL,"
    " control_id bytea NOT NULL,"
    " bytes bytea NOT NULL,"
    " state smallint NOT NULL,"
    " possible_duplicate boolean NOT NULL DEFAULT false,"
    " attempts integer NOT NULL DEFAULT 0,"
    " enqueued_at bigint NOT NULL,"
    " queued_at bigint NOT NULL,"
    " written_at bigint,"
    " finished_at bigint,"
    " ack_code text,"
    " ack bytea,"
    " round_trip_us bigint,"
    " error bytea,"
    " outcome bigint,"
    " token bigint NOT NULL DEFAULT 0,"
    " UNIQUE(destination, control_id));"
    "CREATE INDEX messages_pending ON @.messages(destination, lane, id) WHERE state < 2;"
    "CREATE UNIQUE INDEX messages_outcomes ON @.messages(outcome) WHERE outcome IS NOT NULL;"
    "CREATE INDEX messages_states ON @.messages(state, id);"
    "CREATE TABLE @.lanes("
    " destination text NOT NULL,"
    " lane integer NOT NULL,"
    " owner text,"
    " expires_at bigint,"
    " token bigint NOT NULL DEFAULT 0,"
    " PRIMARY KEY(destination, lane));"
    "CREATE TABLE @.instances(owner text PRIMARY KEY, expires_at bigint NOT NULL);",
};
static_assert(std::size(migrations) == schema_version);

bool plain_identifier(const std::string& s)
{
    if (s.empty() || s.size() > 63 || !(std::islower(static_cast<unsigned char>(s[0])) || s[0] == '_'))
        return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_';
    });
}

// `@` in `sql` stands for the schema.
std::string in_schema(std::string_view sql, const std::string& schema)
{
    std::string out;
    out.reserve(sql.size() + 64);
    for (char c : sql) {
        if (c == '@')
            out += schema;
        else
            out += c;
    }
    return out;
}

std::string hex(std::string_view bytes)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string out = "\\x";
    out.reserve(2 + bytes.size() * 2);
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

// bytea in the text format: `\x` and two hex digits a byte.
std::string unhex(std::string_view text)
{
    auto value = [](char c) -> int {
        return c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0';
    };
    if (text.size() < 2 || text.substr(0, 2) != "\\x")
        return std::string(text);
    std::string out;
    out.reserve((text.size() - 2) / 2);
    for (std::size_t i = 2; i + 1 < text.size(); i += 2)
        out += static_cast<char>(value(text[i]) << 4 | value(text[i + 1]));
    return out;
}

std::int64_t to_int(std::string_view text)
{
    std::int64_t v = 0;
    bool negative = !text.empty() && text.front() == '-';
    for (char c : negative ? text.substr(1) : text)
        v = v * 10 + (c - '0');
    return negative ? -v : v;
}

bool lost(error_code ec)
{
    return ec == pq_error::connection_lost || ec == pq_error::connect_failed;
}

// libpq's errors as the outbox's.
error_code translate(error_code ec)
{
    if (!ec || ec.category() != pq_category())
        return ec == asio::error::operation_aborted ? error_code(outbox_errc::closed) : ec;
    switch (static_cast<pq_error>(ec.value())) {
    case pq_error::connect_failed:
    case pq_error::connection_lost: return outbox_errc::store_unavailable;
    case pq_error::serialization_failure: return outbox_errc::store_busy;
    default: return outbox_errc::store_failed;
    }
}

constexpr const char* record_columns =
    "id, destination, lane, control_id, state, possible_duplicate::int, attempts, enqueued_at, queued_at, written_at,"
    " finished_at, ack_code, ack, round_trip_us, error, outcome, bytes";

outbox_record read_record(const pq_result& r, int row)
{
    outbox_record rec;
    rec.id = to_int(r.get(row, 0));
    rec.destination = std::string(r.get(row, 1));
    rec.lane = static_cast<std::uint32_t>(to_int(r.get(row, 2)));
    rec.control_id = unhex(r.get(row, 3));
    rec.state = static_cast<outbox_state>(std::clamp<std::int64_t>(to_int(r.get(row, 4)), 0, 4));
    rec.possible_duplicate = to_int(r.get(row, 5)) != 0;
    rec.attempts = static_cast<std::uint32_t>(std::max<std::int64_t>(0, to_int(r.get(row, 6))));
    rec.enqueued_at = from_ms(to_int(r.get(row, 7)));
    rec.queued_at = from_ms(to_int(r.get(row, 8)));
    if (!r.is_null(row, 9))
        rec.written_at = from_ms(to_int(r.get(row, 9)));
    if (!r.is_null(row, 10))
        rec.finished_at = from_ms(to_int(r.get(row, 10)));
    if (!r.is_null(row, 11))
        rec.code = parse_ack_code(r.get(row, 11));
    rec.ack = unhex(r.get(row, 12));
    rec.round_trip = std::chrono::microseconds(to_int(r.get(row, 13)));
    rec.error = unhex(r.get(row, 14));
    rec.outcome = r.is_null(row, 15) ? 0 : static_cast<std::uint64_t>(to_int(r.get(row, 15)));
    rec.message = unhex(r.get(row, 16));
    return rec;
}

struct pq_reply {
    error_code ec;
    pq_result result;
};

// One statement as an awaitable. A plain function, not a coroutine: its arguments are stored
// by async_initiate, so no temporary of the caller lives across its co_await (GCC 12).
asio::awaitable<pq_reply> exec(const std::shared_ptr<pq_connection>& c, std::string sql, params p = {})
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(pq_reply)>(
        [c](auto h, std::string sql, params p) {
            auto shared = std::make_shared<decltype(h)>(std::move(h));
            c->async_exec(sql, p, [shared](error_code ec, pq_result r) { std::move(*shared)(pq_reply{ec, std::move(r)}); });
        },
        asio::use_awaitable, std::move(sql), std::move(p));
}

asio::awaitable<pq_reply> connect(const std::shared_ptr<pq_connection>& c, std::string conninfo)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(pq_reply)>(
        [c](auto h, std::string conninfo) {
            auto shared = std::make_shared<decltype(h)>(std::move(h));
            c->async_connect(conninfo, [shared](error_code ec) { std::move(*shared)(pq_reply{ec, {}}); });
        },
        asio::use_awaitable, std::move(conninfo));
}

struct pq_notification {
    error_code ec;
    std::string payload;
};

asio::awaitable<pq_notification> notification(const std::shared_ptr<pq_connection>& c)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(pq_notification)>(
        [c](auto h) {
            auto shared = std::make_shared<decltype(h)>(std::move(h));
            c->async_notification([shared](error_code ec, std::string, std::string payload) {
                std::move(*shared)(pq_notification{ec, std::move(payload)});
            });
        },
        asio::use_awaitable);
}

// Notifications: the channel is the schema's name (a plain identifier, so usable as is), and
// a payload is "<store tag> <kind>[ <lane> <destination>]": the tag lets a store ignore its
// own changes (its outbox woke itself already), the destination comes last as it may hold
// spaces.
std::string random_tag()
{
    std::random_device rd;
    char tag[17];
    std::snprintf(tag, sizeof tag, "%08x%08x", rd(), rd());
    return tag;
}

std::optional<store_change> parse_change(std::string_view payload, std::string_view own_tag)
{
    const auto space = payload.find(' ');
    if (space == std::string_view::npos)
        return store_change{};
    if (payload.substr(0, space) == own_tag)
        return std::nullopt;
    std::string_view rest = payload.substr(space + 1);
    if (rest == "r")
        return store_change{.what = store_change::kind::retried};
    if (rest == "o")
        return store_change{.what = store_change::kind::outcome};
    if (rest.starts_with("q ")) {
        rest.remove_prefix(2);
        const auto end = rest.find(' ');
        const std::string_view lane = rest.substr(0, end);
        if (end != std::string_view::npos && !lane.empty() && lane.size() <= 10 &&
            std::all_of(lane.begin(), lane.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return store_change{.what = store_change::kind::queued,
                                .lane = {std::string(rest.substr(end + 1)), static_cast<std::uint32_t>(to_int(lane))}};
    }
    return store_change{}; // not ours to read: look everywhere
}

// The tables' names, and the statements that differ only by them, built once.
struct statements {
    explicit statements(const std::string& schema)
        : meta(schema + ".meta"), messages(schema + ".messages"), lanes(schema + ".lanes"),
          instances(schema + ".instances"), channel(schema), tag(random_tag())
    {
    }
    std::string meta, messages, lanes, instances;
    std::string channel; // of the notifications
    std::string tag;     // of this store's notifications

    std::string note(std::string_view what) const { return tag + ' ' + std::string(what); }
};

// What the operations share: the pool of connections, on one strand.
class pg_state : public std::enable_shared_from_this<pg_state> {
public:
    template <class... Results>
    using handler_t = store::handler<void(error_code, Results...)>;

    pg_state(asio::any_io_executor ex, std::string conninfo, const pg_settings& settings)
        : sql(settings.schema), ex_(std::move(ex)), strand_(asio::make_strand(ex_)), conninfo_(std::move(conninfo)),
          max_(std::max<std::size_t>(1, settings.connections)), idle_in_transaction_(settings.idle_in_transaction)
    {
    }

    const statements sql;

    // Runs `body(connection, results...)` on a connection of the pool and completes `h` with
    // its error and results. A transaction the body left open (it failed) is rolled back.
    template <class... Results, class Body>
    void submit(handler_t<Results...> h, Body body)
    {
        asio::post(strand_, [self = shared_from_this(), h = std::move(h), body = std::move(body)]() mutable {
            if (self->closing_ || self->closed_) {
                self->complete<Results...>(std::move(h), outbox_errc::closed, {});
                return;
            }
            ++self->active_;
            asio::co_spawn(self->strand_, operate<Results...>(self, std::move(body), std::move(h)), asio::detached);
        });
    }

    // Once the operations under way are over: closes every connection, then calls `h`.
    void close(store::handler<void()> h)
    {
        asio::post(strand_, [self = shared_from_this(), h = std::move(h)]() mutable {
            self->close_waiters_.push_back(std::move(h));
            self->closing_ = true;
            self->maybe_closed();
        });
    }

    // Listens on a connection of its own, outside the pool, until the store closes; a lost
    // one is made again with the pool's backoff. Once listening, reports `unknown`: what was
    // notified before (or while it was down) is not delivered to it.
    void watch(std::function<void(store_change)> f)
    {
        asio::post(strand_, [self = shared_from_this(), f = std::move(f)]() mutable {
            if (self->on_change_ || self->closing_ || self->closed_)
                return;
            self->on_change_ = std::move(f);
            asio::co_spawn(self->strand_, listen(self), asio::detached);
        });
    }

    // Without waiting: what is under way fails with outbox_errc::closed.
    void shut()
    {
        asio::post(strand_, [self = shared_from_this()] {
            self->closing_ = true;
            self->shut_down();
        });
    }

private:
    static asio::awaitable<void> listen(std::shared_ptr<pg_state> self)
    {
        std::chrono::milliseconds backoff{0};
        while (!self->closing_ && !self->closed_) {
            if (backoff.count() > 0) {
                self->listen_backoff_ = std::make_shared<asio::steady_timer>(self->strand_, backoff);
                auto waiting = self->listen_backoff_->async_wait(asio::as_tuple(asio::use_awaitable));
                co_await std::move(waiting);
                self->listen_backoff_.reset();
                if (self->closing_ || self->closed_)
                    break;
            }
            auto c = std::make_shared<pq_connection>(self->strand_);
            self->listener_ = c;
            auto connecting = connect(c, self->conninfo_);
            pq_reply r = co_await std::move(connecting);
            if (!r.ec && !self->closed_) {
                auto listening = exec(c, "LISTEN " + self->sql.channel);
                r = co_await std::move(listening);
            }
            if (!r.ec && !self->closed_) {
                backoff = {};
                self->on_change_(store_change{});
                for (;;) {
                    auto waiting = notification(c);
                    const pq_notification n = co_await std::move(waiting);
                    if (n.ec || self->closed_)
                        break;
                    if (auto change = parse_change(n.payload, self->sql.tag))
                        self->on_change_(std::move(*change));
                }
            }
            c->close();
            self->listener_.reset();
            backoff = std::clamp<std::chrono::milliseconds>(backoff * 2, std::chrono::milliseconds(100),
                                                            std::chrono::seconds(5));
        }
    }

    template <class... Results, class Body>
    static asio::awaitable<void> operate(std::shared_ptr<pg_state> self, Body body, handler_t<Results...> h)
    {
        std::tuple<Results...> out{};
        error_code ec;
        auto acquiring = self->acquire(ec);
        std::shared_ptr<pq_connection> c = co_await std::move(acquiring);
        if (c) {
            auto running = std::apply([&](Results&... r) { return body(c, r...); }, out);
            ec = co_await std::move(running);
            if (ec && !lost(ec) && c->in_transaction()) {
                auto rollback = exec(c, "ROLLBACK");
                const pq_reply r = co_await std::move(rollback);
                if (r.ec)
                    ec = r.ec;
            }
            self->give_back(std::move(c), !lost(ec));
        }
        self->complete<Results...>(std::move(h), translate(ec), ec ? std::tuple<Results...>{} : std::move(out));
        --self->active_;
        self->maybe_closed();
    }

    template <class... Results>
    void complete(handler_t<Results...> h, error_code ec, std::tuple<Results...> out)
    {
        std::apply([&](Results&... r) { asio::post(ex_, asio::append(std::move(h), ec, std::move(r)...)); }, out);
    }

    // A connection from the pool: an idle one, a new one while there are fewer than max_, or
    // the next one given back. After a failed connection attempt the next waits a backoff
    // (100 ms doubling to 5 s), so that a server that is down is not hammered.
    asio::awaitable<std::shared_ptr<pq_connection>> acquire(error_code& ec)
    {
        for (;;) {
            if (closed_) {
                ec = asio::error::operation_aborted;
                co_return nullptr;
            }
            if (!idle_.empty()) {
                auto c = std::move(idle_.back());
                idle_.pop_back();
                busy_.insert(c);
                co_return c;
            }
            if (open_ < max_)
                break;
            auto t = std::make_shared<asio::steady_timer>(strand_, asio::steady_timer::time_point::max());
            waiters_.push_back(t);
            auto waiting = t->async_wait(asio::as_tuple(asio::use_awaitable));
            co_await std::move(waiting);
        }
        ++open_;
        if (const auto now = std::chrono::steady_clock::now(); now < next_connect_) {
            auto t = std::make_shared<asio::steady_timer>(strand_, next_connect_);
            backing_off_.insert(t);
            auto waiting = t->async_wait(asio::as_tuple(asio::use_awaitable));
            co_await std::move(waiting);
            backing_off_.erase(t);
        }
        auto c = std::make_shared<pq_connection>(strand_);
        busy_.insert(c);
        auto connecting = connect(c, conninfo_);
        const pq_reply connected = co_await std::move(connecting);
        ec = connected.ec;
        // An instance stopped inside a transaction (SIGSTOP, a paused VM) would hold its lane's
        // row and the outcome counter locked for as long as it stays stopped, and every other
        // instance would wait behind it: the server ends such a transaction instead.
        if (!ec && idle_in_transaction_.count() > 0) {
            auto setting = exec(c, "SET idle_in_transaction_session_timeout = " +
                                       std::to_string(idle_in_transaction_.count()));
            const pq_reply set = co_await std::move(setting);
            ec = set.ec;
        }
        if (!ec && closed_)
            ec = asio::error::operation_aborted;
        if (ec) {
            busy_.erase(c);
            c->close();
            --open_;
            backoff_ = std::clamp<std::chrono::milliseconds>(backoff_ * 2, std::chrono::milliseconds(100),
                                                             std::chrono::seconds(5));
            next_connect_ = std::chrono::steady_clock::now() + backoff_;
            wake_one();
            co_return nullptr;
        }
        backoff_ = {};
        co_return c;
    }

    // A connection that was lost is dropped, and with it the idle ones: after a restart of the
    // server they are all dead, and finding it out one operation at a time fails each of them.
    void give_back(std::shared_ptr<pq_connection> c, bool healthy)
    {
        busy_.erase(c);
        if (healthy && !closed_) {
            idle_.push_back(std::move(c));
        } else {
            c->close();
            --open_;
            if (!healthy) {
                for (auto& i : idle_)
                    i->close();
                open_ -= idle_.size();
                idle_.clear();
            }
        }
        wake_one();
    }

    void wake_one()
    {
        if (!waiters_.empty()) {
            waiters_.front()->cancel();
            waiters_.pop_front();
        }
    }

    void maybe_closed()
    {
        if (!closing_ || active_ > 0)
            return;
        shut_down();
        auto waiting = std::move(close_waiters_);
        close_waiters_.clear();
        for (auto& h : waiting)
            asio::post(ex_, std::move(h));
    }

    void shut_down()
    {
        closed_ = true;
        for (auto& c : idle_)
            c->close();
        open_ -= idle_.size();
        idle_.clear();
        for (auto& c : busy_)
            c->close();
        for (auto& t : waiters_)
            t->cancel();
        waiters_.clear();
        for (auto& t : backing_off_)
            t->cancel();
        if (listener_)
            listener_->close();
        if (listen_backoff_)
            listen_backoff_->cancel();
    }

    asio::any_io_executor ex_;
    asio::strand<asio::any_io_executor> strand_;
    std::string conninfo_;
    std::size_t max_;
    std::chrono::milliseconds idle_in_transaction_;
    // On the strand:
    std::vector<std::shared_ptr<pq_connection>> idle_;
    std::set<std::shared_ptr<pq_connection>> busy_;
    std::size_t open_ = 0; // idle, busy, or being connected
    std::list<std::shared_ptr<asio::steady_timer>> waiters_;
    std::set<std::shared_ptr<asio::steady_timer>> backing_off_;
    std::chrono::milliseconds backoff_{0};
    std::chrono::steady_clock::time_point next_connect_{};
    std::size_t active_ = 0;
    bool closing_ = false;
    bool closed_ = false;
    std::list<store::handler<void()>> close_waiters_;
    std::function<void(store_change)> on_change_;
    std::shared_ptr<pq_connection> listener_;
    std::shared_ptr<asio::steady_timer> listen_backoff_;
};

using connection_ptr = std::shared_ptr<pq_connection>;

// Runs `sql`; its error, and its result in `out` when given.
#define HL7_PG_EXEC(out, ...)                                                                                       \
    do {                                                                                                            \
        auto hl7_pg_op = exec(__VA_ARGS__);                                                                         \
        pq_reply hl7_pg_reply = co_await std::move(hl7_pg_op);                                                      \
        if (hl7_pg_reply.ec)                                                                                        \
            co_return hl7_pg_reply.ec;                                                                              \
        out = std::move(hl7_pg_reply.result);                                                                       \
    } while (false)

class pg_store final : public store {
public:
    explicit pg_store(std::shared_ptr<pg_state> state) : state_(std::move(state)) {}
    ~pg_store() override { state_->shut(); }

    void enqueue(new_message m, handler<void(error_code, enqueue_result)> h) override
    {
        const statements& q = state_->sql;
        // The lane's row comes with its first message, so that runs find the lane.
        std::string insert = "WITH m AS (INSERT INTO " + q.messages +
                             "(destination, lane, control_id, bytes, state, enqueued_at, queued_at) "
                             "VALUES($1, $2, $3, $4, 0, $5, $5) ON CONFLICT (destination, control_id) DO NOTHING "
                             "RETURNING id), l AS (INSERT INTO " +
                             q.lanes + "(destination, lane) SELECT $1::text, $2::integer FROM m ON CONFLICT DO NOTHING) "
                             "SELECT id, pg_notify($6, $7) FROM m";
        // Notified in the insert's own transaction: on its commit, and only if it stored a message.
        std::string note = q.note("q " + std::to_string(m.lane) + ' ' + m.destination);
        std::string find = "SELECT id, lane, state, (bytes = $3)::int FROM " + q.messages +
                           " WHERE destination = $1 AND control_id = $2";
        state_->submit<enqueue_result>(
            std::move(h), [m = std::move(m), insert = std::move(insert), find = std::move(find), note = std::move(note),
                           channel = q.channel](const connection_ptr& c, enqueue_result& out) -> asio::awaitable<error_code> {
                const std::string control_id = hex(m.control_id);
                const std::string bytes = hex(m.bytes);
                pq_result r;
                HL7_PG_EXEC(r, c, insert,
                            {m.destination, std::to_string(m.lane), control_id, bytes, std::to_string(to_ms(m.at)),
                             channel, note});
                if (r.rows() == 1) {
                    out = {.id = to_int(r.get(0, 0)), .lane = m.lane, .state = outbox_state::queued};
                    co_return error_code{};
                }
                HL7_PG_EXEC(r, c, find, {m.destination, control_id, bytes});
                if (r.rows() != 1) // purged between the two statements: the caller may try again
                    co_return error_code(outbox_errc::store_busy);
                if (to_int(r.get(0, 3)) == 0)
                    co_return error_code(outbox_errc::control_id_conflict);
                out = {.id = to_int(r.get(0, 0)),
                       .lane = static_cast<std::uint32_t>(to_int(r.get(0, 1))),
                       .state = static_cast<outbox_state>(std::clamp<std::int64_t>(to_int(r.get(0, 2)), 0, 4)),
                       .duplicate = true};
                co_return error_code{};
            });
    }

    void select(record_query q, handler<void(error_code, std::vector<outbox_record>)> h) override
    {
        std::string sql = std::string("SELECT ") + record_columns + " FROM " + state_->sql.messages + " WHERE true";
        params p;
        auto param = [&](std::string v) {
            p.emplace_back(std::move(v));
            std::string placeholder(1, '$');
            placeholder += std::to_string(p.size());
            return placeholder;
        };
        if (q.id)
            sql += " AND id = " + param(std::to_string(*q.id));
        if (!q.destination.empty())
            sql += " AND destination = " + param(q.destination);
        if (q.control_id)
            sql += " AND control_id = " + param(hex(*q.control_id));
        if (q.lane)
            sql += " AND lane = " + param(std::to_string(*q.lane));
        if (!q.states.empty())
            sql += " AND " + state_condition(q.states);
        if (q.after_outcome) {
            sql += " AND outcome > " + param(std::to_string(*q.after_outcome)) + " ORDER BY outcome";
        } else {
            if (q.after_id > 0)
                sql += " AND id > " + param(std::to_string(q.after_id));
            sql += " ORDER BY id";
        }
        sql += " LIMIT " + param(std::to_string(std::min<std::size_t>(q.limit, INT64_MAX)));
        state_->submit<std::vector<outbox_record>>(
            std::move(h), [sql = std::move(sql), p = std::move(p)](
                              const connection_ptr& c, std::vector<outbox_record>& out) -> asio::awaitable<error_code> {
                pq_result r;
                HL7_PG_EXEC(r, c, sql, p);
                out.reserve(static_cast<std::size_t>(r.rows()));
                for (int i = 0; i < r.rows(); ++i)
                    out.push_back(read_record(r, i));
                co_return error_code{};
            });
    }

    // The outcome counter is taken under its row's lock until the commit (see record), so the
    // last number given out is the last one committed.
    void latest_outcome(handler<void(error_code, std::uint64_t)> h) override
    {
        std::string sql = "SELECT value - 1 FROM " + state_->sql.meta + " WHERE key = 'next_outcome'";
        state_->submit<std::uint64_t>(
            std::move(h), [sql = std::move(sql)](const connection_ptr& c, std::uint64_t& out) -> asio::awaitable<error_code> {
                pq_result r;
                HL7_PG_EXEC(r, c, sql);
                if (r.rows() != 1)
                    co_return error_code(outbox_errc::incompatible_store);
                out = static_cast<std::uint64_t>(std::max<std::int64_t>(0, to_int(r.get(0, 0))));
                co_return error_code{};
            });
    }

    void lanes(std::string destination, handler<void(error_code, std::vector<std::uint32_t>)> h) override
    {
        std::string sql = "SELECT lane FROM " + state_->sql.lanes + " WHERE destination = $1 ORDER BY lane";
        state_->submit<std::vector<std::uint32_t>>(
            std::move(h), [sql = std::move(sql), d = std::move(destination)](
                              const connection_ptr& c, std::vector<std::uint32_t>& out) -> asio::awaitable<error_code> {
                pq_result r;
                HL7_PG_EXEC(r, c, sql, {d});
                for (int i = 0; i < r.rows(); ++i)
                    out.push_back(static_cast<std::uint32_t>(to_int(r.get(i, 0))));
                co_return error_code{};
            });
    }

    // Any number of instances deliver at once: the leases keep them apart.
    void begin_delivery(handler<void(error_code)> h) override
    {
        state_->submit<>(std::move(h), [](const connection_ptr&) -> asio::awaitable<error_code> { co_return error_code{}; });
    }

    void end_delivery(handler<void(error_code)> h) override
    {
        state_->submit<>(std::move(h), [](const connection_ptr&) -> asio::awaitable<error_code> { co_return error_code{}; });
    }

    void heartbeat(std::string owner, outbox_clock::duration ttl, handler<void(error_code, std::size_t)> h) override
    {
        const statements& q = state_->sql;
        // Rows of instances gone for an hour are swept on the way.
        std::string sql = std::string("WITH up AS (INSERT INTO ") + q.instances + "(owner, expires_at) VALUES($1, " +
                          server_ms + " + $2) ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at), "
                          "gone AS (DELETE FROM " + q.instances + " WHERE expires_at < " + server_ms +
                          " - 3600000 AND owner <> $1) SELECT count(*) FROM " + q.instances + " WHERE expires_at > " +
                          server_ms + " AND owner <> $1";
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count();
        state_->submit<std::size_t>(std::move(h), [sql = std::move(sql), owner = std::move(owner), ms](
                                                      const connection_ptr& c, std::size_t& out) -> asio::awaitable<error_code> {
            pq_result r;
            HL7_PG_EXEC(r, c, sql, {owner, std::to_string(ms)});
            out = static_cast<std::size_t>(to_int(r.get(0, 0))) + (ms > 0 ? 1 : 0);
            co_return error_code{};
        });
    }

    // The owner renews its own lease (waiting for its row if one of its own records holds it);
    // anyone else takes the lease only when it is free or expired, skipping a row another
    // claimer or recorder has locked: that lane is busy, and the claim says lease_held.
    void claim(lane_key lane, std::string owner, outbox_clock::duration ttl, outbox_clock::time_point,
               handler<void(error_code, lease)> h) override
    {
        const statements& q = state_->sql;
        std::string renew = "UPDATE " + q.lanes + " SET expires_at = " + server_ms +
                            " + $4 WHERE destination = $1 AND lane = $2 AND owner = $3 RETURNING token, expires_at";
        std::string take = "UPDATE " + q.lanes + " l SET owner = $3, expires_at = " + server_ms +
                           " + $4, token = l.token + 1 FROM (SELECT destination, lane FROM " + q.lanes +
                           " WHERE destination = $1 AND lane = $2 AND (owner IS NULL OR expires_at <= " + server_ms +
                           ") FOR UPDATE SKIP LOCKED) free WHERE l.destination = free.destination AND l.lane = "
                           "free.lane RETURNING l.token, l.expires_at";
        std::string create = "INSERT INTO " + q.lanes + "(destination, lane, owner, expires_at, token) VALUES($1, $2, $3, " +
                             server_ms + " + $4, 1) ON CONFLICT DO NOTHING RETURNING token, expires_at";
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count();
        state_->submit<lease>(std::move(h), [lane = std::move(lane), owner = std::move(owner), ms, renew = std::move(renew),
                                             take = std::move(take), create = std::move(create)](
                                                const connection_ptr& c, lease& out) -> asio::awaitable<error_code> {
            const params p{lane.destination, std::to_string(lane.lane), owner, std::to_string(ms)};
            pq_result r;
            HL7_PG_EXEC(r, c, renew, p);
            if (r.rows() == 0)
                HL7_PG_EXEC(r, c, take, p);
            if (r.rows() == 0)
                HL7_PG_EXEC(r, c, create, p);
            if (r.rows() == 0)
                co_return error_code(outbox_errc::lease_held);
            out = {.lane = lane,
                   .owner = owner,
                   .token = static_cast<std::uint64_t>(to_int(r.get(0, 0))),
                   .expires = from_ms(to_int(r.get(0, 1)))};
            co_return error_code{};
        });
    }

    void release(lease l, handler<void(error_code)> h) override
    {
        std::string sql = "UPDATE " + state_->sql.lanes +
                          " SET owner = NULL, expires_at = NULL WHERE destination = $1 AND lane = $2 AND owner = $3 AND "
                          "token = $4";
        state_->submit<>(std::move(h), [sql = std::move(sql), l = std::move(l)](
                                           const connection_ptr& c) -> asio::awaitable<error_code> {
            pq_result r;
            HL7_PG_EXEC(r, c, sql, {l.lane.destination, std::to_string(l.lane.lane), l.owner, std::to_string(l.token)});
            co_return error_code{};
        });
    }

    // One transaction: the lease's row locked and its token checked first, so that a takeover
    // waits for this commit or this transaction sees the takeover and writes nothing. A change
    // to a message that is no longer pending (only the lease holder changes pending messages)
    // means the lane's view is stale: nothing is written then either. Outcome
    // numbers are taken last, under the counter row's lock until the commit (which notifies
    // the outcome to the stream's waiters in other processes): numbers are
    // committed in their order, so a reader that sees outcome n has every outcome before it
    // (a stream cursor never skips one that commits late). The price is that finishing
    // transactions of all lanes take turns for the time of one commit.
    void record(lease l, std::vector<lane_change> changes, handler<void(error_code)> h) override
    {
        state_->submit<>(std::move(h), [state = state_, l = std::move(l), changes = std::move(changes)](
                                           const connection_ptr& c) -> asio::awaitable<error_code> {
            const statements& q = state->sql;
            const std::string lane = std::to_string(l.lane.lane);
            const std::string token = std::to_string(l.token);
            pq_result r;
            HL7_PG_EXEC(r, c, "BEGIN");
            HL7_PG_EXEC(r, c,
                        "SELECT 1 FROM " + q.lanes +
                            " WHERE destination = $1 AND lane = $2 AND owner = $3 AND token = $4 FOR UPDATE",
                        {l.lane.destination, lane, l.owner, token});
            if (r.rows() != 1)
                co_return error_code(outbox_errc::lease_lost);
            std::size_t finishing = 0;
            for (const lane_change& ch : changes) {
                switch (ch.what) {
                case lane_change::kind::written:
                    HL7_PG_EXEC(r, c,
                                "UPDATE " + q.messages +
                                    " SET state = 1, attempts = attempts + 1, written_at = $1, possible_duplicate = "
                                    "(possible_duplicate OR $2), token = $6 WHERE id = $3 AND destination = $4 AND "
                                    "lane = $5 AND state < 2",
                                {std::to_string(to_ms(ch.at)), ch.possible_duplicate ? "true" : "false",
                                 std::to_string(ch.id), l.lane.destination, lane, token});
                    if (r.affected() != 1)
                        co_return error_code(outbox_errc::lease_lost);
                    break;
                case lane_change::kind::requeued:
                    HL7_PG_EXEC(r, c,
                                "UPDATE " + q.messages +
                                    " SET state = 0, attempts = greatest(attempts - $1, 0), error = coalesce($2, "
                                    "error), token = $6 WHERE id = $3 AND destination = $4 AND lane = $5 AND state < 2",
                                {ch.uncount ? "1" : "0",
                                 ch.error.empty() ? std::nullopt : std::optional<std::string>(hex(ch.error)),
                                 std::to_string(ch.id), l.lane.destination, lane, token});
                    if (r.affected() != 1)
                        co_return error_code(outbox_errc::lease_lost);
                    break;
                case lane_change::kind::finished: ++finishing; break;
                }
            }
            if (finishing > 0) {
                HL7_PG_EXEC(r, c,
                            "UPDATE " + q.meta +
                                " SET value = value + $1 WHERE key = 'next_outcome' RETURNING value - $1, pg_notify($2, $3)",
                            {std::to_string(finishing), q.channel, q.note("o")});
                if (r.rows() != 1)
                    co_return error_code(outbox_errc::incompatible_store);
                std::int64_t outcome = to_int(r.get(0, 0));
                for (const lane_change& ch : changes) {
                    if (ch.what != lane_change::kind::finished)
                        continue;
                    HL7_PG_EXEC(r, c,
                                "UPDATE " + q.messages +
                                    " SET state = $1, finished_at = $2, ack_code = $3, ack = $4, round_trip_us = $5, "
                                    "error = $6, outcome = $7, token = $11 WHERE id = $8 AND destination = $9 AND "
                                    "lane = $10 AND state < 2",
                                {std::to_string(static_cast<int>(ch.state)), std::to_string(to_ms(ch.at)),
                                 ch.code ? std::optional<std::string>(std::string(to_string(*ch.code))) : std::nullopt,
                                 ch.ack.empty() ? std::nullopt : std::optional<std::string>(hex(ch.ack)),
                                 std::to_string(ch.round_trip.count()),
                                 ch.error.empty() ? std::nullopt : std::optional<std::string>(hex(ch.error)),
                                 std::to_string(outcome++), std::to_string(ch.id), l.lane.destination, lane, token});
                    if (r.affected() != 1)
                        co_return error_code(outbox_errc::lease_lost);
                }
            }
            HL7_PG_EXEC(r, c, "COMMIT");
            co_return error_code{};
        });
    }

    void retry(std::vector<std::int64_t> ids, bool all_dead, outbox_clock::time_point now,
               handler<void(error_code, std::uint64_t)> h) override
    {
        std::string sql = "UPDATE " + state_->sql.messages +
                          " SET state = 0, attempts = 0, queued_at = $1, finished_at = NULL, ack_code = NULL, ack = "
                          "NULL, round_trip_us = NULL, error = NULL, outcome = NULL WHERE state >= 3" +
                          (all_dead ? std::string() : std::string(" AND id = ANY($2::bigint[])"));
        params p{std::to_string(to_ms(now))};
        if (!all_dead) {
            std::string list = "{";
            for (std::size_t i = 0; i < ids.size(); ++i) {
                if (i > 0)
                    list += ',';
                list += std::to_string(ids[i]);
            }
            p.emplace_back(list + "}");
        }
        // Runs of other processes are notified on the commit, if something was queued again.
        state_->submit<std::uint64_t>(std::move(h), [sql = std::move(sql), p = std::move(p), state = state_](
                                                        const connection_ptr& c, std::uint64_t& out) -> asio::awaitable<error_code> {
            pq_result r;
            HL7_PG_EXEC(r, c, "BEGIN");
            HL7_PG_EXEC(r, c, sql, p);
            out = r.affected();
            if (out > 0)
                HL7_PG_EXEC(r, c, "SELECT pg_notify($1, $2)", {state->sql.channel, state->sql.note("r")});
            HL7_PG_EXEC(r, c, "COMMIT");
            co_return error_code{};
        });
    }

    void purge(outbox_clock::time_point before, handler<void(error_code, std::uint64_t)> h) override
    {
        std::string sql = "DELETE FROM " + state_->sql.messages + " WHERE state >= 2 AND finished_at < $1";
        state_->submit<std::uint64_t>(std::move(h), [sql = std::move(sql), before](
                                                        const connection_ptr& c, std::uint64_t& out) -> asio::awaitable<error_code> {
            pq_result r;
            HL7_PG_EXEC(r, c, sql, {std::to_string(to_ms(before))});
            out = r.affected();
            co_return error_code{};
        });
    }

    void status(handler<void(error_code, std::vector<outbox_lane_status>)> h) override
    {
        const statements& q = state_->sql;
        std::string leases = "SELECT destination, lane, owner, expires_at, token FROM " + q.lanes;
        std::string counts = "SELECT destination, lane, state, count(*), sum(possible_duplicate::int), min(queued_at) FROM " +
                             q.messages + " GROUP BY destination, lane, state";
        state_->submit<std::vector<outbox_lane_status>>(
            std::move(h), [leases = std::move(leases), counts = std::move(counts)](
                              const connection_ptr& c, std::vector<outbox_lane_status>& out) -> asio::awaitable<error_code> {
                std::map<lane_key, outbox_lane_status> lanes;
                auto at = [&](std::string_view destination, std::string_view lane) -> outbox_lane_status& {
                    lane_key key{std::string(destination), static_cast<std::uint32_t>(to_int(lane))};
                    auto it = lanes.find(key);
                    if (it == lanes.end())
                        it = lanes.emplace(key, outbox_lane_status{.destination = key.destination, .lane = key.lane}).first;
                    return it->second;
                };
                pq_result r;
                HL7_PG_EXEC(r, c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
                HL7_PG_EXEC(r, c, leases);
                for (int i = 0; i < r.rows(); ++i) {
                    outbox_lane_status& s = at(r.get(i, 0), r.get(i, 1));
                    s.lease_owner = std::string(r.get(i, 2));
                    if (!r.is_null(i, 3))
                        s.lease_expires = from_ms(to_int(r.get(i, 3)));
                    s.lease_token = static_cast<std::uint64_t>(to_int(r.get(i, 4)));
                }
                HL7_PG_EXEC(r, c, counts);
                for (int i = 0; i < r.rows(); ++i) {
                    outbox_lane_status& s = at(r.get(i, 0), r.get(i, 1));
                    const auto n = static_cast<std::uint64_t>(to_int(r.get(i, 3)));
                    const auto state = to_int(r.get(i, 2));
                    s.possible_duplicates += static_cast<std::uint64_t>(to_int(r.get(i, 4)));
                    switch (static_cast<outbox_state>(state)) {
                    case outbox_state::queued: s.queued += n; break;
                    case outbox_state::written: s.written += n; break;
                    case outbox_state::acknowledged: s.acknowledged += n; break;
                    case outbox_state::rejected: s.rejected += n; break;
                    case outbox_state::failed: s.failed += n; break;
                    }
                    if (state < 2) {
                        const auto oldest = from_ms(to_int(r.get(i, 5)));
                        if (!s.oldest_pending || oldest < *s.oldest_pending)
                            s.oldest_pending = oldest;
                    }
                }
                HL7_PG_EXEC(r, c, "COMMIT");
                for (auto& entry : lanes)
                    out.push_back(std::move(entry.second));
                co_return error_code{};
            });
    }

    void watch(std::function<void(store_change)> f) override { state_->watch(std::move(f)); }

    void close(handler<void()> h) override { state_->close(std::move(h)); }

private:
    std::shared_ptr<pg_state> state_;
};

#undef HL7_PG_EXEC

// The blocking connection open_pg_store prepares the schema with.
struct blocking_connection {
    PGconn* conn;
    ~blocking_connection() { PQfinish(conn); }

    error_code exec(const std::string& sql, pq_result* out = nullptr) const
    {
        pq_result r(PQexec(conn, sql.c_str()));
        const ExecStatusType status = r.get() ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)
            return PQstatus(conn) == CONNECTION_BAD ? error_code(outbox_errc::store_unavailable)
                                                    : error_code(outbox_errc::store_failed);
        if (out)
            *out = std::move(r);
        return {};
    }
};

// Under an advisory lock (instances starting together migrate one at a time): creates the
// schema and its version table if missing, refuses a schema that holds tables of something
// else or of a newer version, and applies the migrations the schema has not had.
error_code prepare_schema(const blocking_connection& db, const std::string& schema)
{
    auto finish = [&](error_code ec) {
        if (ec) {
            (void)db.exec("ROLLBACK");
            return ec;
        }
        return db.exec("COMMIT");
    };
    if (auto ec = db.exec("BEGIN"))
        return ec;
    if (auto ec = db.exec("SELECT pg_advisory_xact_lock(hashtext('hl7_outbox schema " + schema + "'))"))
        return finish(ec);
    pq_result r;
    if (auto ec = db.exec("SELECT (SELECT count(*) FROM information_schema.tables WHERE table_schema = '" + schema +
                              "'), to_regclass('" + schema + ".schema_version') IS NOT NULL",
                          &r))
        return finish(ec);
    const bool versioned = r.get(0, 1) == "t";
    if (!versioned && to_int(r.get(0, 0)) > 0)
        return finish(outbox_errc::incompatible_store);
    int version = 0;
    if (!versioned) {
        if (auto ec = db.exec("CREATE SCHEMA IF NOT EXISTS " + schema + "; CREATE TABLE " + schema +
                              ".schema_version(version integer NOT NULL); INSERT INTO " + schema +
                              ".schema_version VALUES(0)"))
            return finish(ec);
    } else {
        if (auto ec = db.exec("SELECT version FROM " + schema + ".schema_version", &r))
            return finish(ec);
        if (r.rows() != 1)
            return finish(outbox_errc::incompatible_store);
        version = static_cast<int>(to_int(r.get(0, 0)));
    }
    if (version > schema_version || version < 0)
        return finish(outbox_errc::incompatible_store);
    for (int v = version; v < schema_version; ++v)
        if (auto ec = db.exec(in_schema(migrations[v], schema)))
            return finish(ec);
    if (version != schema_version)
        if (auto ec = db.exec("UPDATE " + schema + ".schema_version SET version = " + std::to_string(schema_version)))
            return finish(ec);
    return finish({});
}

} // namespace

outcome::result<std::unique_ptr<store>> open_pg_store(asio::any_io_executor ex, const std::string& conninfo,
                                                      pg_settings settings)
{
    if (!plain_identifier(settings.schema))
        return error_code(outbox_errc::cannot_open);
    blocking_connection db{PQconnectdb(conninfo.c_str())};
    if (db.conn == nullptr || PQstatus(db.conn) != CONNECTION_OK)
        return error_code(outbox_errc::store_unavailable);
    // "already exists, skipping" and the like are not ours to print.
    PQsetNoticeProcessor(db.conn, [](void*, const char*) {}, nullptr);
    if (auto ec = prepare_schema(db, settings.schema))
        return ec;
    auto state = std::make_shared<pg_state>(std::move(ex), conninfo, settings);
    return std::unique_ptr<store>(std::make_unique<pg_store>(std::move(state)));
}

} // namespace hl7::detail
