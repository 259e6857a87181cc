#include "net/pq_connection.hpp"

#include <boost/asio/post.hpp>

#include <libpq-fe.h>

#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <unistd.h>

namespace hl7::detail {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

class pq_category_impl final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "hl7.postgres"; }
    std::string message(int ev) const override
    {
        switch (static_cast<pq_error>(ev)) {
        case pq_error::connect_failed: return "cannot connect to PostgreSQL";
        case pq_error::connection_lost: return "connection to PostgreSQL lost";
        case pq_error::query_failed: return "PostgreSQL statement failed";
        case pq_error::unique_violation: return "PostgreSQL unique constraint violated";
        case pq_error::serialization_failure: return "PostgreSQL transaction conflict (may be retried)";
        }
        return "unknown hl7.postgres error " + std::to_string(ev);
    }
};

// libpq's messages end with a newline.
std::string trimmed(const char* text)
{
    std::string s = text ? text : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

} // namespace

const boost::system::error_category& pq_category() noexcept
{
    static const pq_category_impl instance;
    return instance;
}

// ---------------------------------------------------------------------------------------
// pq_result

pq_result& pq_result::operator=(pq_result&& other) noexcept
{
    if (this != &other) {
        if (r_)
            PQclear(r_);
        r_ = other.r_;
        other.r_ = nullptr;
    }
    return *this;
}

pq_result::~pq_result()
{
    if (r_)
        PQclear(r_);
}

int pq_result::rows() const noexcept
{
    return r_ ? PQntuples(r_) : 0;
}

int pq_result::columns() const noexcept
{
    return r_ ? PQnfields(r_) : 0;
}

std::string_view pq_result::get(int row, int column) const noexcept
{
    if (!r_ || is_null(row, column))
        return {};
    return {PQgetvalue(r_, row, column), static_cast<std::size_t>(PQgetlength(r_, row, column))};
}

bool pq_result::is_null(int row, int column) const noexcept
{
    return !r_ || PQgetisnull(r_, row, column) == 1;
}

std::uint64_t pq_result::affected() const noexcept
{
    const char* n = r_ ? PQcmdTuples(r_) : "";
    return n && *n ? std::strtoull(n, nullptr, 10) : 0;
}

// ---------------------------------------------------------------------------------------
// pq_connection

pq_connection::pq_connection(asio::any_io_executor ex)
    : ex_(std::move(ex)), socket_(ex_)
{
}

pq_connection::~pq_connection()
{
    drop_socket();
    if (conn_)
        PQfinish(conn_);
}

void pq_connection::post(std::function<void()> f)
{
    asio::post(ex_, std::move(f));
}

// Asio waits on a duplicate of libpq's socket, never on libpq's own descriptor: libpq closes
// its socket the moment it finds the connection gone (and may replace it while connecting),
// and the number is then free for the next socket the process opens. A registration made under
// libpq's number would be removed by number when this object goes, taking the new socket's
// with it (which then waits forever), or would silently stop reporting once libpq swapped in a
// new socket under the same number. The duplicate keeps the socket open until we close it.
// While connecting, `renew` takes a fresh duplicate at every step, since libpq may have
// replaced its socket; once connected, libpq keeps it until the connection ends.
error_code pq_connection::watch_socket(bool renew)
{
    if (socket_.is_open() && !renew)
        return {};
    drop_socket();
    const int fd = PQsocket(conn_);
    if (fd < 0)
        return pq_error::connection_lost;
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return error_code(errno, boost::system::system_category());
    error_code ec;
    socket_.assign(copy, ec);
    if (ec)
        ::close(copy);
    return ec;
}

// Released, then closed: while libpq's descriptor keeps the same socket open, closing this
// one alone would leave its registration with the reactor in place.
void pq_connection::drop_socket() noexcept
{
    if (socket_.is_open())
        ::close(socket_.release());
}

void pq_connection::wait(wait_for what, bool renew, std::function<void(error_code)> then)
{
    if (const error_code ec = watch_socket(renew)) {
        error_ = "cannot wait on the PostgreSQL socket: " + ec.message();
        post([then = std::move(then), ec] { then(ec); });
        return;
    }
    const auto type = what == wait_for::read ? asio::posix::descriptor_base::wait_read
                                             : asio::posix::descriptor_base::wait_write;
    socket_.async_wait(type, [self = shared_from_this(), then = std::move(then)](error_code ec) {
        if (self->closed_)
            ec = asio::error::operation_aborted;
        if (ec)
            self->error_ = ec.message();
        then(ec);
    });
}

error_code pq_connection::failure(pq_error fallback)
{
    error_ = trimmed(conn_ ? PQerrorMessage(conn_) : "out of memory");
    if (conn_ && PQstatus(conn_) == CONNECTION_BAD && fallback != pq_error::connect_failed)
        return pq_error::connection_lost;
    return fallback;
}

// What a finished statement's result says: success, or the failure its SQLSTATE names.
error_code pq_connection::outcome_of(const pq_result& r)
{
    const PGresult* res = r.get();
    switch (res ? PQresultStatus(res) : PGRES_FATAL_ERROR) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
        return {};
    default:
        break;
    }
    error_ = trimmed(res ? PQresultErrorMessage(res) : PQerrorMessage(conn_));
    if (PQstatus(conn_) == CONNECTION_BAD)
        return pq_error::connection_lost;
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    const std::string_view sqlstate = state ? state : "";
    if (sqlstate == "23505")
        return pq_error::unique_violation;
    if (sqlstate == "40001" || sqlstate == "40P01")
        return pq_error::serialization_failure;
    // Class 08: connection exceptions; 57P01-57P03: the server is shutting down or starting.
    if (sqlstate.starts_with("08") || sqlstate.starts_with("57P"))
        return pq_error::connection_lost;
    return pq_error::query_failed;
}

void pq_connection::async_connect(const std::string& conninfo, handler h)
{
    conn_ = PQconnectStart(conninfo.c_str());
    if (conn_) // the server's notices and warnings are not ours to print on standard error
        PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
    if (!conn_ || PQstatus(conn_) == CONNECTION_BAD || PQsetnonblocking(conn_, 1) != 0) {
        const error_code ec = failure(pq_error::connect_failed);
        post([h = std::move(h), ec] { h(ec); });
        return;
    }
    // As libpq's documentation says: behave at first as if PQconnectPoll had asked to write.
    poll_connect(PGRES_POLLING_WRITING, std::move(h));
}

void pq_connection::poll_connect(int status, handler h)
{
    switch (status) {
    case PGRES_POLLING_OK:
        post([h = std::move(h)] { h({}); });
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        wait(status == PGRES_POLLING_READING ? wait_for::read : wait_for::write, true,
             [this, h = std::move(h)](error_code ec) mutable {
                 if (ec)
                     h(ec == asio::error::operation_aborted ? ec : make_error_code(pq_error::connect_failed));
                 else
                     poll_connect(PQconnectPoll(conn_), std::move(h));
             });
        return;
    default: {
        const error_code ec = failure(pq_error::connect_failed);
        post([h = std::move(h), ec] { h(ec); });
        return;
    }
    }
}

void pq_connection::async_exec(const std::string& sql, const std::vector<std::optional<std::string>>& params,
                               result_handler h)
{
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params)
        values.push_back(p ? p->c_str() : nullptr);
    if (closed_ || !conn_ ||
        PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                          nullptr, 0) != 1) {
        const error_code ec = closed_ ? make_error_code(asio::error::operation_aborted) : failure(pq_error::connection_lost);
        post([h = std::move(h), ec] { h(ec, pq_result()); });
        return;
    }
    flush(std::move(h));
}

void pq_connection::flush(result_handler h)
{
    const int r = PQflush(conn_);
    if (r < 0) {
        const error_code ec = failure(pq_error::connection_lost);
        post([h = std::move(h), ec] { h(ec, pq_result()); });
        return;
    }
    if (r == 1) {
        wait(wait_for::write, false, [this, h = std::move(h)](error_code ec) mutable {
            if (ec)
                h(ec == asio::error::operation_aborted ? ec : make_error_code(pq_error::connection_lost), pq_result());
            else
                flush(std::move(h));
        });
        return;
    }
    read_results(std::move(h), std::make_shared<pq_result>());
}

// A statement gives one result, then a null one; with several, the last one counts.
void pq_connection::read_results(result_handler h, std::shared_ptr<pq_result> last)
{
    if (PQconsumeInput(conn_) != 1) {
        const error_code ec = failure(pq_error::connection_lost);
        post([h = std::move(h), ec] { h(ec, pq_result()); });
        return;
    }
    while (PQisBusy(conn_) == 0) {
        PGresult* r = PQgetResult(conn_);
        if (!r) {
            const error_code ec = outcome_of(*last);
            post([h = std::move(h), last, ec] { h(ec, ec ? pq_result() : std::move(*last)); });
            return;
        }
        *last = pq_result(r);
    }
    wait(wait_for::read, false, [this, h = std::move(h), last](error_code ec) mutable {
        if (ec)
            h(ec == asio::error::operation_aborted ? ec : make_error_code(pq_error::connection_lost), pq_result());
        else
            read_results(std::move(h), std::move(last));
    });
}

void pq_connection::async_notification(notification_handler h)
{
    if (closed_ || !conn_ || PQconsumeInput(conn_) != 1) {
        const error_code ec = closed_ ? make_error_code(asio::error::operation_aborted) : failure(pq_error::connection_lost);
        post([h = std::move(h), ec] { h(ec, {}, {}); });
        return;
    }
    if (PGnotify* n = PQnotifies(conn_)) {
        std::string channel = n->relname ? n->relname : "";
        std::string payload = n->extra ? n->extra : "";
        PQfreemem(n);
        post([h = std::move(h), channel = std::move(channel), payload = std::move(payload)] { h({}, channel, payload); });
        return;
    }
    wait(wait_for::read, false, [this, h = std::move(h)](error_code ec) mutable {
        if (ec)
            h(ec == asio::error::operation_aborted ? ec : make_error_code(pq_error::connection_lost), {}, {});
        else
            async_notification(std::move(h));
    });
}

bool pq_connection::in_transaction() const noexcept
{
    const PGTransactionStatusType t = conn_ ? PQtransactionStatus(conn_) : PQTRANS_UNKNOWN;
    return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

void pq_connection::close()
{
    closed_ = true;
    error_code ignored;
    socket_.cancel(ignored);
}

} // namespace hl7::detail
