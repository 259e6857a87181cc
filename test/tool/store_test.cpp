// hl7 listen's message files: names, numbering across restarts, no overwriting, no partial
// file under a final name.
#include "store.hpp"

#include "output.hpp"
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using hl7::test::names_in;
using hl7::tool::message_store;

namespace {

std::string read(const fs::path& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

} // namespace

TEST_CASE("file names carry the number on six digits or more and a safe form of the control id")
{
    CHECK(message_store::file_name(1, "OUT1") == "000001-OUT1.hl7");
    CHECK(message_store::file_name(1234567, "A") == "1234567-A.hl7");
    CHECK(message_store::file_name(2, "x/y z..") == "000002-x_y_z...hl7");
    CHECK(message_store::file_name(3, "") == "000003.hl7");
    CHECK(message_store::file_name(4, std::string(100, 'a')) == "000004-" + std::string(64, 'a') + ".hl7");
}

TEST_CASE("a store numbers on from the highest number in its directory")
{
    hl7::test::temp_dir tmp;
    tmp.write("000041-X.hl7", "x");
    tmp.write("notes.txt", "not a message");
    tmp.write("7-Y.hl7", "y");
    message_store store(tmp.path());
    CHECK(store.next_number() == 42);
    const auto saved = store.save("NEW", "MSH|new");
    CHECK(saved.filename() == "000042-NEW.hl7");
    CHECK(read(saved) == "MSH|new");
}

TEST_CASE("a store never overwrites a file: a name already taken makes it take the next number")
{
    hl7::test::temp_dir tmp;
    message_store store(tmp.path());
    tmp.write("000001-A.hl7", "someone else's"); // appears after the store was opened
    const auto saved = store.save("A", "mine");
    CHECK(saved.filename() == "000002-A.hl7");
    CHECK(read(tmp.path() / "000001-A.hl7") == "someone else's");
    CHECK(read(saved) == "mine");
    CHECK(names_in(tmp.path()) == std::set<std::string>{"000001-A.hl7", "000002-A.hl7"}); // no temporary left
}

TEST_CASE("concurrent saves each get a file of their own, whole")
{
    hl7::test::temp_dir tmp;
    message_store store(tmp.path());
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            std::string id = "T"; // appended to, not inserted into (a false -Wrestrict of GCC 12)
            id += std::to_string(t);
            for (int i = 0; i < 25; ++i)
                store.save(id, std::string(1000 + i, static_cast<char>('a' + t)));
        });
    for (auto& t : threads)
        t.join();
    const auto names = names_in(tmp.path());
    CHECK(names.size() == 100);
    for (const auto& n : names)
        CHECK(read(tmp.path() / n).size() >= 1000);
}

TEST_CASE("a store that cannot create its directory fails with a message")
{
    hl7::test::temp_dir tmp;
    const std::string file = tmp.write("plain", "a file, not a directory");
    CHECK_THROWS_AS(message_store(fs::path(file) / "below"), hl7::tool::failure);
}

// As root, a read-only directory is writable anyway.
TEST_CASE("a failed save reports the file it could not write and leaves nothing behind"
          * doctest::skip(::geteuid() == 0))
{
    hl7::test::temp_dir tmp;
    message_store store(tmp.path());
    fs::permissions(tmp.path(), fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_AS(store.save("X", "bytes"), std::system_error);
    fs::permissions(tmp.path(), fs::perms::owner_all);
    CHECK(names_in(tmp.path()).empty());
}
