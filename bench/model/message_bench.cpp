// Parsing and lookups on the sample messages.
#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>

#include "support/util.hpp"

#include <benchmark/benchmark.h>

namespace {

void parse_sample(benchmark::State& state, const char* name, const char* check_path, std::string_view expected)
{
    const std::string bytes = hl7::test::read_sample(name);
    for (auto _ : state) {
        auto m = hl7::message::parse(std::string_view(bytes));
        benchmark::DoNotOptimize(m);
        if (!m || !(m.value().get(check_path) == expected)) {
            state.SkipWithError("parse gave a wrong result");
            break;
        }
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes.size()));
    state.counters["messages/s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// The check runs once, after the timed loop: comparing strings is not part of a lookup.
void get_path(benchmark::State& state, const char* name, const char* path, std::string_view expected)
{
    const auto m = hl7::message::parse(hl7::test::read_sample(name)).value();
    hl7::outcome::result<hl7::value> v = hl7::value{};
    for (auto _ : state) {
        v = m.get(path);
        benchmark::DoNotOptimize(v);
    }
    if (!(v == expected))
        state.SkipWithError("lookup gave a wrong result");
}

void make_ack(benchmark::State& state)
{
    const auto m = hl7::message::parse(hl7::test::read_sample("adt_a01.hl7")).value();
    for (auto _ : state) {
        auto ack = hl7::make_ack(m, hl7::verdict::accept);
        benchmark::DoNotOptimize(ack);
        if (!ack || !(ack.value().get("MSA.2") == "MSG00001")) {
            state.SkipWithError("make_ack gave a wrong result");
            break;
        }
    }
}

BENCHMARK(make_ack)->Name("ack/make");
BENCHMARK_CAPTURE(parse_sample, adt_a01, "adt_a01.hl7", "OBX[3].5[2]", "Nausea\\S\\no vomiting")->Name("parse/adt_a01");
BENCHMARK_CAPTURE(parse_sample, oru_r01, "oru_r01.hl7", "NTE.1", "1")->Name("parse/oru_r01");
BENCHMARK_CAPTURE(get_path, pid_5_1, "adt_a01.hl7", "PID.5.1", "DOE")->Name("get/PID.5.1");
BENCHMARK_CAPTURE(get_path, msa_1, "ack_adt_a01.hl7", "MSA.1", "AA")->Name("get/MSA.1");

} // namespace
