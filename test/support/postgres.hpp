// A PostgreSQL server of the test's own: initdb in a temporary directory, listening only on a
// Unix socket in that directory (no TCP port, so tests never collide), run as the `postgres`
// user when the tests run as root (PostgreSQL refuses to run as root), stopped and removed
// when the object goes. Nothing a test does depends on a database someone else set up.
#pragma once

#include "support/process.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <pwd.h>
#include <string>
#include <unistd.h>
#include <vector>

namespace hl7::test {

class throwaway_postgres {
public:
    /// Whether PostgreSQL's server binaries are installed here. Tests that need a server are
    /// skipped without them: `TEST_CASE("..." * doctest::skip(!throwaway_postgres::available()))`.
    static bool available() { return !server_bindir().empty(); }

    /// Starts a server (which must be available()); a server that fails to start fails the
    /// test. `durable`: fsync on, as in production (benchmarks); otherwise off, which only
    /// matters if the machine itself crashes.
    static throwaway_postgres start(bool durable = false)
    {
        const std::string bin = server_bindir();
        REQUIRE_MESSAGE(!bin.empty(), "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql");
        throwaway_postgres pg(bin, durable);
        pg.create();
        return pg;
    }

    throwaway_postgres(throwaway_postgres&& other) noexcept
        : bin_(std::move(other.bin_)), dir_(std::move(other.dir_)), durable_(other.durable_), running_(other.running_)
    {
        other.dir_.clear();
        other.running_ = false;
    }
    throwaway_postgres& operator=(throwaway_postgres&&) = delete;

    ~throwaway_postgres()
    {
        if (dir_.empty())
            return;
        if (running_)
            (void)ctl({"stop", "-m", "immediate"});
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    /// A libpq connection URI for the server's `postgres` database, as superuser `hl7`.
    std::string uri() const { return "postgresql://hl7@/postgres?host=" + dir_ + "&port=" + std::to_string(port); }

    /// The directory of the server's socket.
    const std::string& socket_dir() const noexcept { return dir_; }

    /// Stops the server at once, as a crash would (no checkpoint, connections cut).
    void kill()
    {
        REQUIRE_MESSAGE(ctl({"stop", "-m", "immediate"}).status == 0, "pg_ctl stop failed");
        running_ = false;
    }

    /// Starts it again after kill(); waits until it accepts connections.
    void restart()
    {
        const auto r = ctl({"start", "-w", "-t", "60", "-l", dir_ + "/server.log", "-o", server_options()});
        REQUIRE_MESSAGE(r.status == 0, "pg_ctl start failed: " << r.out << r.err << log());
        running_ = true;
    }

    /// Runs SQL through psql (for tests that set things up or look behind the library's back);
    /// the output, unaligned and tuples only.
    std::string psql(const std::string& sql) const
    {
        const auto r = run({bin_ + "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", uri(), "-c", sql});
        REQUIRE_MESSAGE(r.status == 0, "psql failed: " << r.err);
        return r.out;
    }

    static constexpr int port = 5432;

private:
    throwaway_postgres(std::string bin, bool durable) : bin_(std::move(bin)), durable_(durable) {}

    // Debian installs the server under /usr/lib/postgresql/<version>/bin; pg_config (from
    // libpq-dev) names that directory.
    static std::string server_bindir()
    {
        std::vector<std::string> candidates;
        const auto config = run({"/bin/sh", "-c", "pg_config --bindir 2>/dev/null"});
        if (config.status == 0 && !config.out.empty())
            candidates.push_back(config.out.substr(0, config.out.find('\n')));
        for (const char* version : {"17", "16", "15", "14", "13"})
            candidates.push_back(std::string("/usr/lib/postgresql/") + version + "/bin");
        for (const std::string& dir : candidates)
            if (::access((dir + "/initdb").c_str(), X_OK) == 0 && ::access((dir + "/pg_ctl").c_str(), X_OK) == 0 &&
                ::access((dir + "/postgres").c_str(), X_OK) == 0)
                return dir;
        return {};
    }

    void create()
    {
        std::string pattern = (std::filesystem::temp_directory_path() / "hl7-pg-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        dir_ = pattern;
        if (::geteuid() == 0) {
            const passwd* pw = ::getpwnam("postgres");
            REQUIRE_MESSAGE(pw != nullptr, "running as root and there is no postgres user to run the server as");
            REQUIRE(::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) == 0);
        }
        const auto init = as_server_user({bin_ + "/initdb", "-D", dir_ + "/data", "-U", "hl7", "-A", "trust",
                                          "--no-sync", "-E", "UTF8", "--locale=C"});
        REQUIRE_MESSAGE(init.status == 0, "initdb failed: " << init.out << init.err);
        restart();
    }

    std::string server_options() const
    {
        std::string o = "-c listen_addresses='' -k " + dir_ + " -p " + std::to_string(port) +
                        " -c max_connections=50 -c shared_buffers=16MB";
        if (!durable_)
            o += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off";
        return o;
    }

    finished ctl(std::vector<std::string> args) const
    {
        std::vector<std::string> argv{bin_ + "/pg_ctl", "-D", dir_ + "/data"};
        argv.insert(argv.end(), args.begin(), args.end());
        return as_server_user(argv);
    }

    finished as_server_user(std::vector<std::string> argv) const
    {
        if (::geteuid() == 0)
            argv.insert(argv.begin(), {"/usr/sbin/runuser", "-u", "postgres", "--"});
        return run(argv, {}, std::chrono::seconds(120));
    }

    std::string log() const
    {
        const auto r = run({"/bin/cat", dir_ + "/server.log"});
        return r.out;
    }

    std::string bin_;
    std::string dir_;
    bool durable_ = false;
    bool running_ = false;
};

/// One server for the whole test binary, started by the first test that needs it.
inline throwaway_postgres& shared_postgres()
{
    static std::optional<throwaway_postgres> pg;
    if (!pg)
        pg.emplace(throwaway_postgres::start());
    return *pg;
}

/// A schema name no other test of any process uses: `prefix`, the process id and a number.
inline std::string fresh_schema(const std::string& prefix)
{
    static std::atomic<int> n{0};
    return prefix + std::to_string(::getpid()) + "_" + std::to_string(++n);
}

} // namespace hl7::test
