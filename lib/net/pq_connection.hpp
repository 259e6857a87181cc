// One PostgreSQL connection driven by an Asio executor: libpq's non-blocking API, its socket
// waited on by the executor instead of a thread blocked inside libpq. Used by the outbox's
// PostgreSQL store; one operation at a time per connection.
#pragma once

#include <hl7/error.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct pg_conn;
struct pg_result;

namespace hl7::detail {

/// What went wrong with PostgreSQL (category "hl7.postgres"); the server's own text is in
/// pq_connection::error_message().
enum class pq_error {
    connect_failed = 1,    ///< the connection could not be established (refused, bad URI, authentication)
    connection_lost,       ///< the server went away (closed, restarted, shut down)
    query_failed,          ///< the statement failed (syntax, constraint other than uniqueness...)
    unique_violation,      ///< SQLSTATE 23505
    serialization_failure, ///< SQLSTATE 40001 or 40P01 (deadlock): the transaction may be retried
};

const boost::system::error_category& pq_category() noexcept;

inline boost::system::error_code make_error_code(pq_error e) noexcept
{
    return {static_cast<int>(e), pq_category()};
}

/// The result of one statement, in text format. Move-only; owns the libpq result.
class pq_result {
public:
    pq_result() = default;
    explicit pq_result(pg_result* r) noexcept : r_(r) {}
    pq_result(pq_result&& other) noexcept : r_(other.r_) { other.r_ = nullptr; }
    pq_result& operator=(pq_result&& other) noexcept;
    pq_result(const pq_result&) = delete;
    pq_result& operator=(const pq_result&) = delete;
    ~pq_result();

    int rows() const noexcept;
    int columns() const noexcept;
    /// The value at (row, column) as text; empty for NULL (tell them apart with is_null).
    std::string_view get(int row, int column) const noexcept;
    bool is_null(int row, int column) const noexcept;
    /// Rows an INSERT, UPDATE or DELETE touched.
    std::uint64_t affected() const noexcept;
    /// The libpq result (null when empty).
    const pg_result* get() const noexcept { return r_; }

private:
    pg_result* r_ = nullptr;
};

/// A libpq connection. Create it with std::make_shared: its operations keep it alive until
/// they complete. Every handler runs on `ex` (give a strand when other code on several
/// threads shares the object) and never inside the call that started the operation.
class pq_connection : public std::enable_shared_from_this<pq_connection> {
public:
    using handler = std::function<void(boost::system::error_code)>;
    using result_handler = std::function<void(boost::system::error_code, pq_result)>;
    using notification_handler = std::function<void(boost::system::error_code, std::string channel, std::string payload)>;

    explicit pq_connection(boost::asio::any_io_executor ex);
    pq_connection(const pq_connection&) = delete;
    pq_connection& operator=(const pq_connection&) = delete;
    ~pq_connection();

    /// Connects to `conninfo` (a libpq URI or key=value string).
    void async_connect(const std::string& conninfo, handler h);

    /// Runs one statement whose parameters ($1, $2...) are given as text, nullopt for NULL.
    void async_exec(const std::string& sql, const std::vector<std::optional<std::string>>& params, result_handler h);

    /// Waits for a notification on a channel this connection LISTENs on.
    void async_notification(notification_handler h);

    /// Ends the connection: what is waiting completes with operation_aborted.
    void close();

    /// Whether a transaction is open (or failed and not yet rolled back) on the connection.
    bool in_transaction() const noexcept;

    /// libpq's or the server's text for the last failure.
    const std::string& error_message() const noexcept { return error_; }

private:
    enum class wait_for { read, write };

    boost::system::error_code watch_socket(bool renew);
    void drop_socket() noexcept;
    void wait(wait_for what, bool renew, std::function<void(boost::system::error_code)> then);
    void poll_connect(int status, handler h);
    void flush(result_handler h);
    void read_results(result_handler h, std::shared_ptr<pq_result> last);
    boost::system::error_code failure(pq_error fallback);
    boost::system::error_code outcome_of(const pq_result& r);
    void post(std::function<void()> f);

    boost::asio::any_io_executor ex_;
    pg_conn* conn_ = nullptr;
    boost::asio::posix::stream_descriptor socket_; // a duplicate of libpq's socket (see watch_socket)
    bool closed_ = false;
    std::string error_;
};

} // namespace hl7::detail

template <>
struct boost::system::is_error_code_enum<hl7::detail::pq_error> : std::true_type {};
