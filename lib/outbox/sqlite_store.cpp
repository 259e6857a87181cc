#include "outbox/sqlite_store.hpp"

#include <boost/asio/any_completion_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <variant>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace hl7::detail {

namespace {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

constexpr std::int64_t schema_version = 1;
// Operations taken into one transaction at most, so that the first of a long queue is not
// held up by all the others.
constexpr std::size_t max_batch = 4096;

error_code from_errno(int e)
{
    switch (e) {
    case EROFS:
    case EACCES:
    case EPERM: return outbox_errc::read_only;
    case ENOSPC:
    case EFBIG:
    case EDQUOT: return outbox_errc::store_full;
    case EIO: return outbox_errc::store_io_error;
    default: return outbox_errc::cannot_open;
    }
}

// SQLite's result as one of ours. The operating system's errno tells a full disk or a file
// size limit (which SQLite reports as an I/O error when a write fails outright) from the rest.
error_code from_sqlite(int rc, sqlite3* db)
{
    const int sys = db != nullptr ? sqlite3_system_errno(db) : 0;
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE: return {};
    case SQLITE_FULL: return outbox_errc::store_full;
    case SQLITE_READONLY: return outbox_errc::read_only;
    case SQLITE_CANTOPEN: return sys == EROFS || sys == EACCES || sys == EPERM ? outbox_errc::read_only : outbox_errc::cannot_open;
    case SQLITE_PERM:
    case SQLITE_AUTH: return outbox_errc::read_only;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return outbox_errc::corrupt_store;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return outbox_errc::store_busy;
    case SQLITE_IOERR:
        if (sys == ENOSPC || sys == EFBIG || sys == EDQUOT)
            return outbox_errc::store_full;
        if (sys == EROFS)
            return outbox_errc::read_only;
        return outbox_errc::store_io_error;
    default: return outbox_errc::store_failed;
    }
}

// A prepared statement taken from the cache, reset when it goes out of scope. One whose
// preparation failed binds nothing and steps to that failure, so that callers check once.
class statement {
public:
    statement(sqlite3* db, sqlite3_stmt* s, int prepared) : db_(db), s_(s), prepared_(prepared) {}
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;
    ~statement()
    {
        if (s_ != nullptr) {
            sqlite3_reset(s_);
            sqlite3_clear_bindings(s_);
        }
    }

    statement& bind(int i, std::int64_t v)
    {
        if (s_ != nullptr)
            sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    statement& bind_text(int i, std::string_view v)
    {
        if (s_ != nullptr)
            sqlite3_bind_text64(s_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8);
        return *this;
    }
    statement& bind_blob(int i, std::string_view v)
    {
        if (s_ != nullptr)
            sqlite3_bind_blob64(s_, i, v.data(), v.size(), SQLITE_STATIC);
        return *this;
    }
    statement& bind_null(int i)
    {
        if (s_ != nullptr)
            sqlite3_bind_null(s_, i);
        return *this;
    }

    /// SQLITE_ROW, SQLITE_DONE, or an error code.
    int step() { return s_ != nullptr ? sqlite3_step(s_) : prepared_; }

    /// Steps to the end; the error, if any.
    error_code run()
    {
        int rc;
        while ((rc = step()) == SQLITE_ROW) {
        }
        return rc == SQLITE_DONE ? error_code{} : from_sqlite(rc, db_);
    }

    /// Ready to run again, bindings kept.
    void reset()
    {
        if (s_ != nullptr)
            sqlite3_reset(s_);
    }

    std::int64_t int64(int col) const { return s_ != nullptr ? sqlite3_column_int64(s_, col) : 0; }
    bool null(int col) const { return s_ == nullptr || sqlite3_column_type(s_, col) == SQLITE_NULL; }
    std::string text(int col) const
    {
        const void* p = s_ != nullptr ? sqlite3_column_blob(s_, col) : nullptr;
        const int n = p != nullptr ? sqlite3_column_bytes(s_, col) : 0;
        return p != nullptr ? std::string(static_cast<const char*>(p), static_cast<std::size_t>(n)) : std::string();
    }

private:
    sqlite3* db_;
    sqlite3_stmt* s_;
    int prepared_;
};

class database {
public:
    explicit database(sqlite3* db) : db_(db) {}
    database(const database&) = delete;
    database& operator=(const database&) = delete;
    ~database()
    {
        for (auto& [sql, s] : cache_)
            sqlite3_finalize(s);
        sqlite3_close_v2(db_);
    }

    sqlite3* handle() const { return db_; }

    error_code error(int rc) const { return from_sqlite(rc, db_); }

    /// A statement prepared once and kept.
    statement prepare(const std::string& sql)
    {
        auto it = cache_.find(sql);
        if (it == cache_.end()) {
            sqlite3_stmt* s = nullptr;
            const int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size() + 1), SQLITE_PREPARE_PERSISTENT,
                                              &s, nullptr);
            if (rc != SQLITE_OK) {
                sqlite3_finalize(s);
                return statement(db_, nullptr, rc);
            }
            it = cache_.emplace(sql, s).first;
        }
        return statement(db_, it->second, SQLITE_OK);
    }

    error_code exec(const std::string& sql) { return prepare(sql).run(); }

    bool in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

private:
    sqlite3* db_;
    std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

// --- the schema ------------------------------------------------------------------------------

constexpr const char* schema_sql[] = {
    "CREATE TABLE outbox_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO outbox_meta VALUES('schema', 1), ('next_outcome', 1)",
    // AUTOINCREMENT: an id is never reused, even after the newest message was purged.
    "CREATE TABLE outbox_messages("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " destination TEXT NOT NULL,"
    " lane INTEGER NOT NULL,"
    " control_id TEXT NOT NULL,"
    " bytes BLOB NOT NULL,"
    " state INTEGER NOT NULL,"
    " possible_duplicate INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " enqueued_at INTEGER NOT NULL,"
    " queued_at INTEGER NOT NULL,"
    " written_at INTEGER,"
    " finished_at INTEGER,"
    " ack_code TEXT,"
    " ack BLOB,"
    " round_trip_us INTEGER,"
    " error TEXT,"
    " outcome INTEGER,"
    " UNIQUE(destination, control_id))",
    // A lane's next messages, whatever the size of the history.
    "CREATE INDEX outbox_pending ON outbox_messages(destination, lane, id) WHERE state < 2",
    "CREATE UNIQUE INDEX outbox_outcomes ON outbox_messages(outcome) WHERE outcome IS NOT NULL",
    "CREATE INDEX outbox_states ON outbox_messages(state, id)",
    "CREATE TABLE outbox_lanes("
    " destination TEXT NOT NULL,"
    " lane INTEGER NOT NULL,"
    " owner TEXT,"
    " expires_at INTEGER,"
    " token INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(destination, lane)) WITHOUT ROWID",
};

constexpr const char* record_columns =
    "id, destination, lane, control_id, state, possible_duplicate, attempts, enqueued_at, queued_at, written_at,"
    " finished_at, ack_code, ack, round_trip_us, error, outcome, bytes";

outbox_record read_record(const statement& s)
{
    outbox_record r;
    r.id = s.int64(0);
    r.destination = s.text(1);
    r.lane = static_cast<std::uint32_t>(s.int64(2));
    r.control_id = s.text(3);
    r.state = static_cast<outbox_state>(std::clamp<std::int64_t>(s.int64(4), 0, 4));
    r.possible_duplicate = s.int64(5) != 0;
    r.attempts = static_cast<std::uint32_t>(std::max<std::int64_t>(0, s.int64(6)));
    r.enqueued_at = from_ms(s.int64(7));
    r.queued_at = from_ms(s.int64(8));
    if (!s.null(9))
        r.written_at = from_ms(s.int64(9));
    if (!s.null(10))
        r.finished_at = from_ms(s.int64(10));
    if (!s.null(11))
        r.code = parse_ack_code(s.text(11));
    r.ack = s.text(12);
    r.round_trip = std::chrono::microseconds(s.int64(13));
    r.error = s.text(14);
    r.outcome = s.null(15) ? 0 : static_cast<std::uint64_t>(s.int64(15));
    r.message = s.text(16);
    return r;
}

// --- checks before SQLite opens the file -----------------------------------------------------

std::uint32_t big_endian(const unsigned char* p, int n)
{
    std::uint32_t v = 0;
    for (int i = 0; i < n; ++i)
        v = (v << 8) | p[i];
    return v;
}

// A file that is not a database at all, or a database cut short with no log to repair it, is
// refused here with a clear error, rather than failing later on whichever page is missing.
error_code check_file(const std::string& path)
{
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return {}; // missing (created next) or unreadable (SQLite names it)
    struct stat st{};
    std::array<unsigned char, 100> header{};
    const bool stated = ::fstat(fd, &st) == 0;
    const ssize_t n = stated && st.st_size > 0 ? ::pread(fd, header.data(), header.size(), 0) : 0;
    ::close(fd);
    if (!stated)
        return outbox_errc::store_io_error;
    if (st.st_size == 0)
        return {};
    if (n != static_cast<ssize_t>(header.size()) || std::memcmp(header.data(), "SQLite format 3", 16) != 0)
        return outbox_errc::corrupt_store;
    std::uint32_t page_size = big_endian(&header[16], 2);
    if (page_size == 1)
        page_size = 65536;
    const std::uint32_t changes = big_endian(&header[24], 4);
    const std::uint32_t pages = big_endian(&header[28], 4);
    const std::uint32_t valid_for = big_endian(&header[92], 4);
    struct stat wal{};
    const bool has_log = ::stat((path + "-wal").c_str(), &wal) == 0 && wal.st_size > 0;
    if (pages != 0 && changes == valid_for && !has_log &&
        static_cast<std::uint64_t>(st.st_size) < static_cast<std::uint64_t>(pages) * page_size)
        return outbox_errc::corrupt_store;
    return {};
}

// SQLite reports a write that fails outright (EFBIG past a file size limit, EDQUOT) as an I/O
// error, and does not keep the errno reliably: a failed write is taken for a full disk when
// the files are at the process's file size limit or the filesystem has no room left.
bool out_of_room(const std::string& path)
{
    struct rlimit rl{};
    if (::getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        for (const std::string& f : {path, path + "-wal"}) {
            struct stat st{};
            if (::stat(f.c_str(), &st) == 0 && static_cast<rlim_t>(st.st_size) + 65536 >= rl.rlim_cur)
                return true;
        }
    }
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    struct statvfs vfs{};
    return ::statvfs(dir.c_str(), &vfs) == 0 && static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize < 1024 * 1024;
}

// Whether the file (or, for a new one, its directory) can be written, with the effective ids:
// SQLite would open an unwritable file read-only without saying so, and names an unwritable
// directory no better than a missing one.
error_code check_access(const std::string& path)
{
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    if (::faccessat(AT_FDCWD, dir.c_str(), F_OK, AT_EACCESS) != 0)
        return outbox_errc::cannot_open;
    const bool exists = ::faccessat(AT_FDCWD, path.c_str(), F_OK, AT_EACCESS) == 0;
    // The directory must take the -wal, -shm and .lock files beside the database.
    if (::faccessat(AT_FDCWD, dir.c_str(), W_OK | X_OK, AT_EACCESS) != 0)
        return errno == EACCES || errno == EROFS || errno == EPERM ? error_code(outbox_errc::read_only)
                                                                   : error_code(outbox_errc::cannot_open);
    if (exists && ::faccessat(AT_FDCWD, path.c_str(), R_OK | W_OK, AT_EACCESS) != 0)
        return errno == EACCES || errno == EROFS || errno == EPERM ? error_code(outbox_errc::read_only)
                                                                   : error_code(outbox_errc::cannot_open);
    return {};
}

// --- operations --------------------------------------------------------------------------------

// One operation given to the store's thread: its body runs inside the batch's transaction,
// its handler is called once the transaction is over.
class job {
public:
    explicit job(bool writes) : writes_(writes) {}
    virtual ~job() = default;
    bool writes() const { return writes_; }
    virtual error_code run(database& db) = 0;
    virtual void complete(error_code ec) = 0;

private:
    bool writes_;
};

template <class Body, class... Results>
class handler_job final : public job {
public:
    using handler_type = asio::any_completion_handler<void(error_code, Results...)>;

    handler_job(bool writes, Body body, handler_type h, const asio::any_io_executor& fallback)
        : job(writes),
          body_(std::move(body)),
          fallback_(fallback),
          work_(asio::prefer(asio::get_associated_executor(h, fallback), asio::execution::outstanding_work.tracked)),
          handler_(std::move(h))
    {
    }

    error_code run(database& db) override
    {
        return std::apply([&](Results&... r) { return body_(db, r...); }, results_);
    }

    // Posted to the store's executor, which never runs it inline, and from there dispatched
    // to the handler's own.
    void complete(error_code ec) override
    {
        if (ec)
            results_ = {};
        std::apply([&](Results&... r) { asio::post(fallback_, asio::append(std::move(handler_), ec, std::move(r)...)); },
                   results_);
        work_ = {};
    }

private:
    Body body_;
    std::tuple<Results...> results_{};
    asio::any_io_executor fallback_;
    asio::any_completion_executor work_; // keeps the handler's execution context busy until it runs
    handler_type handler_;
};

class sqlite_store final : public store {
public:
    sqlite_store(asio::any_io_executor ex, std::unique_ptr<database> db, std::string path, sqlite_settings settings)
        : ex_(std::move(ex)), db_(std::move(db)), path_(std::move(path)), lock_path_(path_ + ".lock"),
          settings_(std::move(settings))
    {
        thread_ = std::thread([this] { work(); });
    }

    ~sqlite_store() override
    {
        {
            std::lock_guard lock(mutex_);
            closing_ = true;
        }
        wake_.notify_one();
        thread_.join();
    }

    void enqueue(new_message m, handler<void(error_code, enqueue_result)> h) override
    {
        submit<enqueue_result>(true, std::move(h), [m = std::move(m)](database& db, enqueue_result& out) -> error_code {
            statement find = db.prepare("SELECT id, lane, state, bytes = ?3 FROM outbox_messages WHERE destination = ?1 AND "
                         "control_id = ?2");
            find.bind_text(1, m.destination).bind_text(2, m.control_id).bind_blob(3, m.bytes);
            if (const int rc = find.step(); rc == SQLITE_ROW) {
                if (find.int64(3) == 0)
                    return outbox_errc::control_id_conflict;
                out = {.id = find.int64(0),
                       .lane = static_cast<std::uint32_t>(find.int64(1)),
                       .state = static_cast<outbox_state>(find.int64(2)),
                       .duplicate = true};
                return {};
            } else if (rc != SQLITE_DONE) {
                return db.error(rc);
            }
            statement insert = db.prepare("INSERT INTO outbox_messages(destination, lane, control_id, bytes, state, enqueued_at, "
                         "queued_at) VALUES(?1, ?2, ?3, ?4, 0, ?5, ?5)");
            insert.bind_text(1, m.destination).bind(2, m.lane).bind_text(3, m.control_id).bind_blob(4, m.bytes);
            insert.bind(5, to_ms(m.at));
            if (auto ec = insert.run())
                return ec;
            out = {.id = sqlite3_last_insert_rowid(db.handle()), .lane = m.lane, .state = outbox_state::queued};
            statement lane = db.prepare("INSERT OR IGNORE INTO outbox_lanes(destination, lane) VALUES(?1, ?2)");
            lane.bind_text(1, m.destination).bind(2, m.lane);
            return lane.run();
        });
    }

    void select(record_query q, handler<void(error_code, std::vector<outbox_record>)> h) override
    {
        submit<std::vector<outbox_record>>(
            false, std::move(h), [q = std::move(q)](database& db, std::vector<outbox_record>& out) -> error_code {
                std::string sql = std::string("SELECT ") + record_columns + " FROM outbox_messages WHERE 1";
                std::vector<std::variant<std::int64_t, std::string>> params;
                auto param = [&](auto v) {
                    params.emplace_back(std::move(v));
                    return "?" + std::to_string(params.size());
                };
                if (q.id)
                    sql += " AND id = " + param(*q.id);
                if (!q.destination.empty())
                    sql += " AND destination = " + param(q.destination);
                if (q.control_id)
                    sql += " AND control_id = " + param(*q.control_id);
                if (q.lane)
                    sql += " AND lane = " + param(static_cast<std::int64_t>(*q.lane));
                if (!q.states.empty())
                    sql += " AND " + state_condition(q.states);
                if (q.after_outcome) {
                    sql += " AND outcome > " + param(static_cast<std::int64_t>(*q.after_outcome)) + " ORDER BY outcome";
                } else {
                    if (q.after_id > 0)
                        sql += " AND id > " + param(q.after_id);
                    sql += " ORDER BY id";
                }
                sql += " LIMIT " + param(static_cast<std::int64_t>(std::min<std::size_t>(q.limit, INT64_MAX)));
                statement s = db.prepare(sql);
                for (std::size_t i = 0; i < params.size(); ++i) {
                    const int n = static_cast<int>(i + 1);
                    if (auto* v = std::get_if<std::int64_t>(&params[i]))
                        s.bind(n, *v);
                    else
                        s.bind_text(n, std::get<std::string>(params[i]));
                }
                int rc;
                while ((rc = s.step()) == SQLITE_ROW)
                    out.push_back(read_record(s));
                return rc == SQLITE_DONE ? error_code{} : db.error(rc);
            });
    }

    void latest_outcome(handler<void(error_code, std::uint64_t)> h) override
    {
        submit<std::uint64_t>(false, std::move(h), [](database& db, std::uint64_t& out) -> error_code {
            statement s = db.prepare("SELECT value FROM outbox_meta WHERE key = 'next_outcome'");
            const int rc = s.step();
            if (rc != SQLITE_ROW)
                return rc == SQLITE_DONE ? error_code(outbox_errc::incompatible_store) : db.error(rc);
            out = static_cast<std::uint64_t>(std::max<std::int64_t>(1, s.int64(0)) - 1);
            return {};
        });
    }

    void lanes(std::string destination, handler<void(error_code, std::vector<std::uint32_t>)> h) override
    {
        submit<std::vector<std::uint32_t>>(
            false, std::move(h),
            [d = std::move(destination)](database& db, std::vector<std::uint32_t>& out) -> error_code {
                statement s = db.prepare("SELECT lane FROM outbox_lanes WHERE destination = ?1 ORDER BY lane");
                s.bind_text(1, d);
                int rc;
                while ((rc = s.step()) == SQLITE_ROW)
                    out.push_back(static_cast<std::uint32_t>(s.int64(0)));
                return rc == SQLITE_DONE ? error_code{} : db.error(rc);
            });
    }

    // One process delivers from a file: an exclusive flock on the sidecar <file>.lock, held
    // while any run of this process delivers. The kernel drops it when the process dies, so a
    // restarted process takes over at once.
    void begin_delivery(handler<void(error_code)> h) override
    {
        submit<>(false, std::move(h), [this](database&) -> error_code {
            if (delivery_refs_ == 0) {
                const int fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
                if (fd < 0)
                    return from_errno(errno);
                if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
                    const int e = errno;
                    ::close(fd);
                    return e == EWOULDBLOCK ? error_code(outbox_errc::delivery_locked) : from_errno(e);
                }
                lock_fd_ = fd;
            }
            ++delivery_refs_;
            return {};
        });
    }

    void end_delivery(handler<void(error_code)> h) override
    {
        submit<>(false, std::move(h), [this](database&) -> error_code {
            if (delivery_refs_ > 0 && --delivery_refs_ == 0)
                unlock();
            return {};
        });
    }

    // One process delivers from a file.
    void heartbeat(std::string, outbox_clock::duration, handler<void(error_code, std::size_t)> h) override
    {
        submit<std::size_t>(false, std::move(h), [](database&, std::size_t& out) -> error_code {
            out = 1;
            return {};
        });
    }

    // With the delivery lock held, a lease held by another owner belongs to a process that is
    // gone: it is taken over at once, with the next token.
    void claim(lane_key lane, std::string owner, outbox_clock::duration ttl, outbox_clock::time_point now,
               handler<void(error_code, lease)> h) override
    {
        submit<lease>(true, std::move(h),
                      [this, lane = std::move(lane), owner = std::move(owner), ttl, now](database& db,
                                                                                         lease& out) -> error_code {
                          if (delivery_refs_ == 0)
                              return outbox_errc::delivery_locked;
                          statement find = db.prepare("SELECT owner, token FROM outbox_lanes WHERE destination = ?1 AND lane = ?2");
                          find.bind_text(1, lane.destination).bind(2, lane.lane);
                          std::uint64_t token = 1;
                          const int rc = find.step();
                          if (rc == SQLITE_ROW) {
                              const bool mine = !find.null(0) && find.text(0) == owner;
                              token = static_cast<std::uint64_t>(find.int64(1)) + (mine ? 0 : 1);
                          } else if (rc != SQLITE_DONE) {
                              return db.error(rc);
                          }
                          const auto expires = now + ttl;
                          statement upsert = db.prepare("INSERT INTO outbox_lanes(destination, lane, owner, expires_at, token) "
                                       "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(destination, lane) DO UPDATE SET "
                                       "owner = ?3, expires_at = ?4, token = ?5");
                          upsert.bind_text(1, lane.destination).bind(2, lane.lane).bind_text(3, owner);
                          upsert.bind(4, to_ms(expires)).bind(5, static_cast<std::int64_t>(token));
                          if (auto ec = upsert.run())
                              return ec;
                          out = {.lane = lane, .owner = owner, .token = token, .expires = expires};
                          return {};
                      });
    }

    void release(lease l, handler<void(error_code)> h) override
    {
        submit<>(true, std::move(h), [l = std::move(l)](database& db) -> error_code {
            statement s = db.prepare("UPDATE outbox_lanes SET owner = NULL, expires_at = NULL WHERE destination = ?1 AND "
                         "lane = ?2 AND owner = ?3 AND token = ?4");
            s.bind_text(1, l.lane.destination).bind(2, l.lane.lane).bind_text(3, l.owner);
            s.bind(4, static_cast<std::int64_t>(l.token));
            return s.run();
        });
    }

    void record(lease l, std::vector<lane_change> changes, handler<void(error_code)> h) override
    {
        submit<>(true, std::move(h), [l = std::move(l), changes = std::move(changes)](database& db) -> error_code {
            statement check = db.prepare("SELECT owner, token FROM outbox_lanes WHERE destination = ?1 AND lane = ?2");
            check.bind_text(1, l.lane.destination).bind(2, l.lane.lane);
            if (const int rc = check.step(); rc != SQLITE_ROW) {
                return rc == SQLITE_DONE ? error_code(outbox_errc::lease_lost) : db.error(rc);
            } else if (check.null(0) || check.text(0) != l.owner ||
                       static_cast<std::uint64_t>(check.int64(1)) != l.token) {
                return outbox_errc::lease_lost;
            }
            for (const lane_change& c : changes)
                if (auto ec = apply(db, l.lane, c))
                    return ec;
            return {};
        });
    }

    void retry(std::vector<std::int64_t> ids, bool all_dead, outbox_clock::time_point now,
               handler<void(error_code, std::uint64_t)> h) override
    {
        submit<std::uint64_t>(true, std::move(h),
                              [ids = std::move(ids), all_dead, now](database& db, std::uint64_t& out) -> error_code {
                                  const std::string sql =
                                      std::string("UPDATE outbox_messages SET state = 0, attempts = 0, queued_at = ?1, "
                                                  "finished_at = NULL, ack_code = NULL, ack = NULL, round_trip_us = "
                                                  "NULL, error = NULL, outcome = NULL WHERE state >= 3") +
                                      (all_dead ? "" : " AND id = ?2");
                                  statement s = db.prepare(sql);
                                  s.bind(1, to_ms(now));
                                  if (all_dead) {
                                      if (auto ec = s.run())
                                          return ec;
                                      out = static_cast<std::uint64_t>(sqlite3_changes64(db.handle()));
                                      return {};
                                  }
                                  for (std::int64_t id : ids) {
                                      s.reset();
                                      s.bind(2, id);
                                      if (auto ec = s.run())
                                          return ec;
                                      out += static_cast<std::uint64_t>(sqlite3_changes64(db.handle()));
                                  }
                                  return {};
                              });
    }

    void purge(outbox_clock::time_point before, handler<void(error_code, std::uint64_t)> h) override
    {
        submit<std::uint64_t>(true, std::move(h), [before](database& db, std::uint64_t& out) -> error_code {
            statement s = db.prepare("DELETE FROM outbox_messages WHERE state >= 2 AND finished_at < ?1");
            s.bind(1, to_ms(before));
            if (auto ec = s.run())
                return ec;
            out = static_cast<std::uint64_t>(sqlite3_changes64(db.handle()));
            return {};
        });
    }

    void status(handler<void(error_code, std::vector<outbox_lane_status>)> h) override
    {
        submit<std::vector<outbox_lane_status>>(
            false, std::move(h), [](database& db, std::vector<outbox_lane_status>& out) -> error_code {
                std::map<lane_key, outbox_lane_status> lanes;
                auto at = [&](std::string destination, std::uint32_t lane) -> outbox_lane_status& {
                    lane_key key{std::move(destination), lane};
                    auto it = lanes.find(key);
                    if (it == lanes.end())
                        it = lanes.emplace(key, outbox_lane_status{.destination = key.destination, .lane = lane}).first;
                    return it->second;
                };
                statement leases = db.prepare("SELECT destination, lane, owner, expires_at, token FROM outbox_lanes");
                int rc;
                while ((rc = leases.step()) == SQLITE_ROW) {
                    outbox_lane_status& s = at(leases.text(0), static_cast<std::uint32_t>(leases.int64(1)));
                    s.lease_owner = leases.text(2);
                    if (!leases.null(3))
                        s.lease_expires = from_ms(leases.int64(3));
                    s.lease_token = static_cast<std::uint64_t>(leases.int64(4));
                }
                if (rc != SQLITE_DONE)
                    return db.error(rc);
                statement counts = db.prepare("SELECT destination, lane, state, count(*), sum(possible_duplicate), min(queued_at) "
                             "FROM outbox_messages GROUP BY destination, lane, state");
                while ((rc = counts.step()) == SQLITE_ROW) {
                    outbox_lane_status& s = at(counts.text(0), static_cast<std::uint32_t>(counts.int64(1)));
                    const auto n = static_cast<std::uint64_t>(counts.int64(3));
                    s.possible_duplicates += static_cast<std::uint64_t>(counts.int64(4));
                    switch (static_cast<outbox_state>(counts.int64(2))) {
                    case outbox_state::queued: s.queued += n; break;
                    case outbox_state::written: s.written += n; break;
                    case outbox_state::acknowledged: s.acknowledged += n; break;
                    case outbox_state::rejected: s.rejected += n; break;
                    case outbox_state::failed: s.failed += n; break;
                    }
                    if (counts.int64(2) < 2) {
                        const auto oldest = from_ms(counts.int64(5));
                        if (!s.oldest_pending || oldest < *s.oldest_pending)
                            s.oldest_pending = oldest;
                    }
                }
                if (rc != SQLITE_DONE)
                    return db.error(rc);
                for (auto& [key, s] : lanes)
                    out.push_back(std::move(s));
                return {};
            });
    }

    // One process delivers from the file (begin_delivery), and what it stores wakes its own
    // lanes: what other processes store is found by polling.
    void watch(std::function<void(store_change)>) override {}

    void close(handler<void()> h) override
    {
        asio::any_completion_executor work =
            asio::prefer(asio::get_associated_executor(h, ex_), asio::execution::outstanding_work.tracked);
        std::unique_lock lock(mutex_);
        if (closed_) {
            lock.unlock();
            asio::post(ex_, std::move(h));
            return;
        }
        closing_ = true;
        close_waiters_.emplace_back(std::move(work), std::move(h));
        lock.unlock();
        wake_.notify_one();
    }

private:
    static error_code apply(database& db, const lane_key& lane, const lane_change& c)
    {
        switch (c.what) {
        case lane_change::kind::written: {
            statement s = db.prepare("UPDATE outbox_messages SET state = 1, attempts = attempts + 1, written_at = ?1, "
                         "possible_duplicate = (possible_duplicate OR ?2) WHERE id = ?3 AND destination = ?4 AND "
                         "lane = ?5 AND state < 2");
            s.bind(1, to_ms(c.at)).bind(2, c.possible_duplicate ? 1 : 0).bind(3, c.id);
            s.bind_text(4, lane.destination).bind(5, lane.lane);
            return s.run();
        }
        case lane_change::kind::requeued: {
            statement s = db.prepare("UPDATE outbox_messages SET state = 0, attempts = max(attempts - ?1, 0), "
                         "error = coalesce(?2, error) WHERE id = ?3 AND destination = ?4 AND lane = ?5 AND "
                         "state < 2");
            s.bind(1, c.uncount ? 1 : 0);
            if (c.error.empty())
                s.bind_null(2);
            else
                s.bind_text(2, c.error);
            s.bind(3, c.id).bind_text(4, lane.destination).bind(5, lane.lane);
            return s.run();
        }
        case lane_change::kind::finished: {
            statement next = db.prepare("UPDATE outbox_meta SET value = value + 1 WHERE key = 'next_outcome' RETURNING value - 1");
            const int rc = next.step();
            if (rc != SQLITE_ROW)
                return rc == SQLITE_DONE ? error_code(outbox_errc::incompatible_store) : db.error(rc);
            const std::int64_t outcome = next.int64(0);
            if (auto ec = next.run())
                return ec;
            statement s = db.prepare("UPDATE outbox_messages SET state = ?1, finished_at = ?2, ack_code = ?3, ack = ?4, "
                         "round_trip_us = ?5, error = ?6, outcome = ?7 WHERE id = ?8 AND destination = ?9 AND "
                         "lane = ?10 AND state < 2");
            s.bind(1, static_cast<std::int64_t>(c.state)).bind(2, to_ms(c.at));
            if (c.code)
                s.bind_text(3, to_string(*c.code));
            else
                s.bind_null(3);
            if (c.ack.empty())
                s.bind_null(4);
            else
                s.bind_blob(4, c.ack);
            s.bind(5, c.round_trip.count());
            if (c.error.empty())
                s.bind_null(6);
            else
                s.bind_text(6, c.error);
            s.bind(7, outcome).bind(8, c.id).bind_text(9, lane.destination).bind(10, lane.lane);
            return s.run();
        }
        }
        return {};
    }

    template <class... Results, class Body>
    void submit(bool writes, asio::any_completion_handler<void(error_code, Results...)> h, Body body)
    {
        auto j = std::make_unique<handler_job<Body, Results...>>(writes, std::move(body), std::move(h), ex_);
        std::unique_lock lock(mutex_);
        if (closing_ || closed_) {
            lock.unlock();
            j->complete(outbox_errc::closed);
            return;
        }
        queue_.push_back(std::move(j));
        lock.unlock();
        wake_.notify_one();
    }

    void work()
    {
        for (;;) {
            std::vector<std::unique_ptr<job>> batch;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [&] { return !queue_.empty() || closing_; });
                if (queue_.empty())
                    break;
                const std::size_t n = std::min(queue_.size(), max_batch);
                for (std::size_t i = 0; i < n; ++i) {
                    batch.push_back(std::move(queue_.front()));
                    queue_.pop_front();
                }
            }
            run_batch(batch);
        }
        unlock();
        db_.reset();
        std::list<std::pair<asio::any_completion_executor, handler<void()>>> waiters;
        {
            std::lock_guard lock(mutex_);
            closed_ = true;
            waiters.swap(close_waiters_);
        }
        for (auto& [work, h] : waiters)
            asio::post(ex_, std::move(h));
    }

    // One transaction for the whole batch, a savepoint for each operation that writes: an
    // operation that fails is rolled back alone, unless SQLite abandoned the whole transaction
    // (a full disk, an I/O error), in which case none of the batch was stored and every one of
    // them fails. Handlers are called only after the commit, so a success is always durable.
    void run_batch(std::vector<std::unique_ptr<job>>& batch)
    {
        database& db = *db_;
        const std::size_t writers = static_cast<std::size_t>(
            std::count_if(batch.begin(), batch.end(), [](const auto& j) { return j->writes(); }));
        auto refine = [&](error_code ec) {
            return ec == outbox_errc::store_io_error && out_of_room(path_) ? error_code(outbox_errc::store_full) : ec;
        };
        auto fail_all = [&](error_code ec) {
            if (db.in_transaction())
                (void)db.exec("ROLLBACK");
            for (auto& j : batch)
                j->complete(refine(ec));
        };
        if (auto ec = db.exec(writers > 0 ? "BEGIN IMMEDIATE" : "BEGIN"))
            return fail_all(ec);
        std::vector<error_code> results(batch.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
            job& j = *batch[i];
            if (j.writes()) {
                if (auto ec = db.exec("SAVEPOINT op"))
                    return fail_all(ec);
            }
            results[i] = j.run(db);
            if (!db.in_transaction())
                return fail_all(results[i] ? results[i] : error_code(outbox_errc::store_failed));
            if (j.writes()) {
                if (results[i]) {
                    if (auto ec = db.exec("ROLLBACK TO op"))
                        return fail_all(ec);
                }
                if (auto ec = db.exec("RELEASE op"))
                    return fail_all(ec);
            }
        }
        if (writers > 0 && settings_.observer) {
            try {
                settings_.observer({.what = outbox_event::kind::committing, .count = writers});
            } catch (...) {
                // An observer that throws changes nothing stored.
            }
        }
        if (auto ec = db.exec("COMMIT"))
            return fail_all(ec);
        for (std::size_t i = 0; i < batch.size(); ++i)
            batch[i]->complete(refine(results[i]));
    }

    void unlock()
    {
        if (lock_fd_ >= 0) {
            ::close(lock_fd_);
            lock_fd_ = -1;
        }
        delivery_refs_ = 0;
    }

    asio::any_io_executor ex_;
    std::unique_ptr<database> db_;
    std::string path_;
    std::string lock_path_;
    sqlite_settings settings_;
    // Only the store's thread touches these two.
    int lock_fd_ = -1;
    std::size_t delivery_refs_ = 0;

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::unique_ptr<job>> queue_;
    bool closing_ = false;
    bool closed_ = false;
    std::list<std::pair<asio::any_completion_executor, handler<void()>>> close_waiters_;
    std::thread thread_;
};

// Creates the schema in an empty file; accepts a file that has it; refuses anything else.
error_code prepare_schema(database& db)
{
    if (auto ec = db.exec("BEGIN IMMEDIATE"))
        return ec;
    auto finish = [&](error_code ec) {
        if (ec) {
            (void)db.exec("ROLLBACK");
            return ec;
        }
        if (auto c = db.exec("COMMIT")) {
            (void)db.exec("ROLLBACK");
            return c;
        }
        return error_code{};
    };
    std::int64_t ours = 0, tables = 0;
    {
        statement s = db.prepare("SELECT count(*), sum(name = 'outbox_meta') FROM sqlite_master WHERE type = 'table'");
        if (const int rc = s.step(); rc != SQLITE_ROW)
            return finish(db.error(rc));
        tables = s.int64(0);
        ours = s.int64(1);
    }
    if (ours == 0) {
        if (tables > 0)
            return finish(outbox_errc::incompatible_store);
        for (const char* sql : schema_sql)
            if (auto ec = db.exec(sql))
                return finish(ec);
        return finish({});
    }
    statement v = db.prepare("SELECT value FROM outbox_meta WHERE key = 'schema'");
    const int rc = v.step();
    if (rc != SQLITE_ROW)
        return finish(rc == SQLITE_DONE ? error_code(outbox_errc::incompatible_store) : db.error(rc));
    return finish(v.int64(0) == schema_version ? error_code{} : error_code(outbox_errc::incompatible_store));
}

} // namespace

outcome::result<std::unique_ptr<store>> open_sqlite_store(asio::any_io_executor ex, const std::string& path,
                                                          sqlite_settings settings)
{
    if (path.empty())
        return error_code(outbox_errc::cannot_open);
    if (auto ec = check_access(path))
        return ec;
    if (auto ec = check_file(path))
        return ec;
    sqlite3* handle = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &handle,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (handle == nullptr)
        return error_code(outbox_errc::store_failed);
    auto db = std::make_unique<database>(handle);
    if (rc != SQLITE_OK)
        return db->error(rc);
    sqlite3_extended_result_codes(handle, 1);
    sqlite3_busy_timeout(handle, static_cast<int>(std::clamp<std::int64_t>(settings.busy_timeout.count(), 0, INT32_MAX)));
    {
        // The first statement reads the file: a file that is not a database fails here.
        statement s = db->prepare("PRAGMA journal_mode = WAL");
        const int step = s.step();
        if (step != SQLITE_ROW)
            return db->error(step);
        if (s.text(0) != "wal")
            return error_code(outbox_errc::read_only); // WAL could not be set up (its files cannot be made)
    }
    // SQLite opens a file it may not write read-only without saying so: refuse it here rather
    // than at the first enqueue.
    if (sqlite3_db_readonly(handle, "main") == 1)
        return error_code(outbox_errc::read_only);
    if (auto ec = db->exec(settings.synchronous == outbox_synchronous::full ? "PRAGMA synchronous = FULL"
                                                                            : "PRAGMA synchronous = NORMAL"))
        return ec;
    if (auto ec = prepare_schema(*db))
        return ec;
    return std::unique_ptr<store>(std::make_unique<sqlite_store>(std::move(ex), std::move(db), path, std::move(settings)));
}

} // namespace hl7::detail
