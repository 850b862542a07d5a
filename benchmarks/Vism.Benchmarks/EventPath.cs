using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;
using Vism.Events.Irq;
using Vism.Events.Vq;
using Vism.Memory.Hugetlb;
using Vism.Native;
using Vism.Transport.Mmio;
using Vism.Transport.VhostUser;

namespace Vism.Benchmarks;

/// <summary>
/// The event path, side by side in one run (issue 15): 64-byte ping-pong between two processes
/// pinned to different cores (taskset) over TCP loopback (TCP_NODELAY), a raw eventfd pair, and ISM
/// regions, where each process is VMM and driver of one vism device through the Driver library
/// (<see cref="VhostUserFrontend"/> or <see cref="MmioVmmClient"/> + <see cref="IsmClient"/>) and this
/// process is the vism host serving both devices. ISM settings: both peers spinning on a sequence
/// number in the region (no events), and write + notify + wait for the event (eventq or per-region
/// vector) with the defaults, the documented low-latency setting and with single levers switched
/// off. For each: round-trip median / p99, the one-way notify -> event median (the ping carries the
/// CLOCK_MONOTONIC time it was written), the CPU of host and peers while active and while idle, and
/// the first event after an idle period. Then event-driven streaming through a region (16 MiB by default) vs a
/// single-thread memcpy, in alternating pairs of runs (<c>--stream-pairs</c>, 5), each stream figure
/// against the memcpy of its own pair; each pair also measures a cross-core ring with no vism in it
/// (<see cref="CrossCore"/>), whose spread over the pairs is the machine's own.
/// Not a BenchmarkDotNet benchmark: two processes, distributions and rates.
/// Command: <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- event-path [options]</c>,
/// see docs/benchmarks.md.
/// </summary>
public static class EventPath
{
    private const int PingAt = 0;
    private const int PongAt = 128;
    private const int Payload = 64;

    /// <summary>Streaming and memcpy both warm up this long (at least one round) before the timed
    /// rounds: JIT tiering of the peers and of the host's event path settles within it.</summary>
    private static readonly TimeSpan StreamWarmup = TimeSpan.FromSeconds(1);

    /// <summary>The cross-core probe in each streaming pair: about ten 50 ms samples (after its own
    /// 1 s warm-up), beside stream rounds of a few tens of ms each.</summary>
    private static readonly TimeSpan PairProbe = TimeSpan.FromSeconds(0.5);
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private sealed record Options(int RoundTrips, int IdleSeconds, int StreamMiB, int Rounds, string CpuA, string CpuB, string[] Only, int RegionMiB = 16, int ChunkKiB = 64, bool TcpEach = true,
        int StreamPairs = 5, int LatencyPairs = 1);

    /// <summary>One ISM setting measured: where the devices live and how the peers drive them.</summary>
    internal sealed record Setting(string Name, string Transport, string Events, int Loops, int SpinUs, bool Doorbell, string Mode = "events",
        TimeSpan? PollFast = null, int BusyPollUs = 0, TimeSpan? PollSlow = null, string Memory = "memfd", bool QueueCalls = true);

    public static int Run(string[] args)
    {
        var o = new Options(20_000, 5, 512, 10, "0", "1", []);
        for (int i = 0; i < args.Length; i++)
        {
            string v = i + 1 < args.Length ? args[i + 1] : "";
            switch (args[i])
            {
                case "--round-trips": o = o with { RoundTrips = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--idle": o = o with { IdleSeconds = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--stream-mib": o = o with { StreamMiB = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--rounds": o = o with { Rounds = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--stream-pairs": o = o with { StreamPairs = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--latency-pairs": o = o with { LatencyPairs = Math.Max(1, int.Parse(v, CultureInfo.InvariantCulture)) }; i++; break;
                case "--tcp-once": o = o with { TcpEach = false }; break;
                case "--stream-region-mib": o = o with { RegionMiB = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--stream-chunk-kib": o = o with { ChunkKiB = int.Parse(v, CultureInfo.InvariantCulture) }; i++; break;
                case "--cpus": o = o with { CpuA = v.Split(',')[0], CpuB = v.Split(',')[1] }; i++; break;
                // Comma-separated substrings of setting names; a value starting with '=' is one substring,
                // commas included (setting names contain commas: --only "=mmio irq, busy-poll").
                case "--only": o = o with { Only = [.. o.Only, .. v.StartsWith('=') ? [v[1..]] : v.Split(',')] }; i++; break;
                default:
                    Console.Error.WriteLine($"event-path: unknown argument {args[i]}; options: --round-trips N (20000) --idle SECONDS (5; 60 for the minute-idle figure) --stream-mib MIB-PER-ROUND (512) --rounds N (10) --stream-region-mib MIB (16) --stream-chunk-kib KIB (64) --stream-pairs N (5) --latency-pairs N (1) --cpus A,B (0,1) --tcp-once --only NAME,... (or --only =NAME-WITH-COMMAS; repeatable)");
                    return 2;
            }
        }
        Fd.RaiseOpenFileLimit();
        var started = Stopwatch.StartNew();
        Console.WriteLine($"event-path: {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} CPUs, .NET {Environment.Version}, peers on CPUs {o.CpuA} and {o.CpuB} (taskset), host unpinned");
        Console.WriteLine($"  load average at start: {LoadAverage()}");
        Console.WriteLine($"  {o.RoundTrips} round trips of {Payload} bytes per setting (after {Warmup(o)} warm-up), idle period {o.IdleSeconds} s, streaming {o.Rounds} rounds of {o.StreamMiB} MiB in {Math.Max(1, o.StreamPairs)} alternating pairs of memcpy and stream runs");
        Console.WriteLine();
        Console.WriteLine("| setting | RTT median | RTT p99 | one-way median | ratio to TCP (median) | CPU active: host / A / B (% of a core) | CPU idle: host / A / B | first event after idle (one-way) |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");

        Setting[] settings =
        [
            new("ism spin (sequence number, no events)", "vhost-user", "vq", 2, 0, false, Mode: "spin"),
            new("vq, defaults (loops = 1, spin-before-block 50us, doorbell)", "vhost-user", "vq", 1, 50, true),
            new("irq, defaults", "vhost-user", "irq", 1, 50, true),
            new("vq, low-latency (defaults + spin-before-block 1ms)", "vhost-user", "vq", 1, 1000, true),
            new("irq, low-latency (defaults + spin-before-block 1ms)", "vhost-user", "irq", 1, 1000, true),
            new("vq, lever off: loops = 2 (devices on two loops: one Post per hop)", "vhost-user", "vq", 2, 50, true),
            new("irq, lever off: loops = 2", "vhost-user", "irq", 2, 50, true),
            new("vq, lever off: no spin", "vhost-user", "vq", 1, 0, true),
            new("vq, lever off: no doorbell (polled window)", "vhost-user", "vq", 1, 50, false),
            new("vq, + busy-poll 200us", "vhost-user", "vq", 1, 50, true, BusyPollUs: 200),
            // Two cores, three threads on the path: vism's loop polls, the peers sleep.
            new("vq, busy-poll 200us, peers sleep (no spin)", "vhost-user", "vq", 1, 0, true, BusyPollUs: 200),
            new("irq, busy-poll 200us, peers sleep (no spin)", "vhost-user", "irq", 1, 0, true, BusyPollUs: 200),
            // Three spinners on two cores: they take turns at every look (the peers yield at each one).
            new("vq, busy-poll 200us, peers spin 1ms", "vhost-user", "vq", 1, 1000, true, BusyPollUs: 200),
            new("irq, busy-poll 200us, peers spin 1ms", "vhost-user", "irq", 1, 1000, true, BusyPollUs: 200),
            new("vq, QEMU-guest path: no doorbell, no spin", "vhost-user", "vq", 1, 0, false),
            new("vq, QEMU-guest path, notify-poll-fast 10us", "vhost-user", "vq", 1, 0, false, PollFast: TimeSpan.FromMicroseconds(10)),
            new("vq, QEMU-guest path, notify-poll-slow 2ms", "vhost-user", "vq", 1, 0, false, PollSlow: TimeSpan.FromMilliseconds(2)),
            // A QEMU guest rings no doorbell: with busy-poll, a write the fast scan finds starts the polling.
            new("vq, QEMU-guest path, busy-poll 200us, no spin", "vhost-user", "vq", 1, 0, false, BusyPollUs: 200),
            new("vq, QEMU-guest path, busy-poll 200us, peers spin 1ms", "vhost-user", "vq", 1, 1000, false, BusyPollUs: 200),
            new("mmio vq, defaults", "mmio", "vq", 1, 50, true),
            new("mmio irq, defaults", "mmio", "irq", 1, 50, true),
            new("mmio irq, loops = 2", "mmio", "irq", 2, 50, true),
            new("mmio irq, lever off: NOTIFY messages (no doorbell)", "mmio", "irq", 1, 50, false),
            new("mmio vq, lever off: no spin", "mmio", "vq", 1, 0, true),
            new("mmio vq, lever off: no spin, no queue call eventfd (line 0 + InterruptStatus READ)", "mmio", "vq", 1, 0, true, QueueCalls: false),
            new("mmio vq, lever off: no queue call eventfd (line 0 + InterruptStatus READ)", "mmio", "vq", 1, 50, true, QueueCalls: false),
            new("mmio irq, lever off: no spin", "mmio", "irq", 1, 0, true),
            new("mmio vq, low-latency (defaults + busy-poll 200us)", "mmio", "vq", 1, 50, true, BusyPollUs: 200),
            new("mmio irq, low-latency (defaults + busy-poll 200us)", "mmio", "irq", 1, 50, true, BusyPollUs: 200),
            // The split that suits two cores: vism's loop polls, the peers sleep (no three spinners on two cores).
            new("mmio vq, busy-poll 200us, peers sleep (no spin)", "mmio", "vq", 1, 0, true, BusyPollUs: 200),
            new("mmio irq, busy-poll 200us, peers sleep (no spin)", "mmio", "irq", 1, 0, true, BusyPollUs: 200),
            new("mmio irq, busy-poll 200us, peers sleep, NOTIFY messages (no doorbell)", "mmio", "irq", 1, 0, false, BusyPollUs: 200),
        ];
        double tcpMedian = 0, eventfdMedian = 0;
        var results = new Dictionary<string, Result>();
        // MMIO settings measured in pairs also get an eventfd round trip beside each run (goal 2:
        // notify -> event against half an eventfd round trip measured at the same moment).
        var halfEventfd = new Dictionary<string, (double[] OneWay, double[] Half)>();
        if (Wanted(o, "tcp"))
        {
            Result tcp = RunPair(o, "tcp", null);
            tcpMedian = tcp.Get("rtt-median");
            Row("TCP loopback (TCP_NODELAY)", tcp, tcpMedian);
        }
        if (Wanted(o, "eventfd"))
        {
            Result efd = RunPair(o, "eventfd", null);
            eventfdMedian = efd.Get("rtt-median");
            Row("raw eventfd between the two processes", efd, tcpMedian);
        }
        // This machine's TCP round trip moves by 2x from one minute to the next: unless --tcp-once,
        // each ISM setting is compared with a TCP ping-pong measured just before it (the ratio cell
        // names that figure), so a ratio compares two things measured at the same moment.
        // With --latency-pairs N, each setting is measured N times, each run paired with a TCP run
        // right before it (odd pairs) or right after it (even pairs); the row gives the median of the
        // runs' medians and of the pairs' ratios, with their range.
        foreach (Setting s in settings)
            if (Wanted(o, s.Name))
            {
                bool adjacent = o.TcpEach && tcpMedian > 0;
                if (!adjacent || o.LatencyPairs == 1)
                {
                    double tcpNow = adjacent ? RunPair(o, "tcp", null).Get("rtt-median") : tcpMedian;
                    Row(s.Name, results[s.Name] = RunPair(o, "ism", s), tcpNow, adjacent);
                    continue;
                }
                var ism = new List<double>();
                var tcp = new List<double>();
                var oneWay = new List<double>();
                var half = new List<double>();
                bool withEventfd = s.Transport == "mmio" && eventfdMedian > 0;
                Result last = new();
                for (int pair = 0; pair < o.LatencyPairs; pair++)
                {
                    // Odd pairs: TCP (and eventfd) first; even pairs: after, so the order favours neither.
                    if (pair % 2 == 0) tcp.Add(RunPair(o, "tcp", null).Get("rtt-median"));
                    if (pair % 2 == 0 && withEventfd) half.Add(RunPair(o, "eventfd", null).Get("rtt-median") / 2);
                    last = RunPair(o, "ism", s);
                    ism.Add(last.Get("rtt-median"));
                    oneWay.Add(last.Get("oneway-median"));
                    if (pair % 2 == 1 && withEventfd) half.Add(RunPair(o, "eventfd", null).Get("rtt-median") / 2);
                    if (pair % 2 == 1) tcp.Add(RunPair(o, "tcp", null).Get("rtt-median"));
                    Console.WriteLine($"    {s.Name}, pair {pair + 1}/{o.LatencyPairs}{(pair % 2 == 1 ? " (TCP after)" : "")}: ISM {ism[^1]:F1} us, TCP {tcp[^1]:F1} us = {ism[^1] / tcp[^1]:F2}x"
                        + (withEventfd ? $"; notify -> event {oneWay[^1]:F1} us, half an eventfd round trip {half[^1]:F1} us = {oneWay[^1] / half[^1]:F2}x" : ""));
                }
                results[s.Name] = last;
                if (withEventfd) halfEventfd[s.Name] = ([.. oneWay], [.. half]);
                PairedRow(s.Name, last, [.. ism], [.. tcp]);
            }
        Console.WriteLine();
        foreach (string name in results.Keys.Where(k => k.StartsWith("mmio", StringComparison.Ordinal)))
            if (halfEventfd.TryGetValue(name, out (double[] OneWay, double[] Half) p))
            {
                double[] r = [.. p.OneWay.Zip(p.Half, (w, h) => w / h)];
                Console.WriteLine($"  {name}: notify -> event one-way median {Median(p.OneWay):F1} us over {r.Length} runs, each against half an eventfd round trip measured beside it ({Median(p.Half):F1} us, {p.Half.Min():F1}-{p.Half.Max():F1}): "
                    + $"**{Median(r):F2}x** median of the pairs ({r.Min():F2}-{r.Max():F2}x; at or under 1.3x in {r.Count(x => x <= 1.3)})"
                    + NotAnEventFigure(results[name], "the last run's hops"));
            }
            else if (results.TryGetValue(name, out Result? m) && eventfdMedian > 0)
                Console.WriteLine($"  {name}: notify -> event one-way median {m.Get("oneway-median"):F1} us = {m.Get("oneway-median") / (eventfdMedian / 2):F2}x half an eventfd round trip ({eventfdMedian / 2:F1} us)"
                    + NotAnEventFigure(m, "hops"));

        if (Wanted(o, "stream"))
        {
            // The cross-core ring with no vism in it, on the streaming CPUs and ring size.
            CrossCore.Summary Probe(TimeSpan duration) =>
                CrossCore.Probe(duration, Math.Clamp(o.RegionMiB, 1, 1024), int.Parse(o.CpuA, CultureInfo.InvariantCulture), int.Parse(o.CpuB, CultureInfo.InvariantCulture));
            Console.WriteLine();
            Console.WriteLine($"  load average before streaming: {LoadAverage()}");
            Console.WriteLine($"  cross-core probe before streaming (2 s, CPUs {o.CpuA} -> {o.CpuB}): {Probe(TimeSpan.FromSeconds(2))}");
            (string Name, string Mode)[] streams =
            [
                ("ISM, event-driven (vq, defaults), notify every 16 chunks", "stream"),
                ("ISM, event-driven (vq, defaults), notify only a waiting peer", "stream-on-demand"),
                ("ISM, event-driven (vq, defaults), notify a waiting peer once half the ring is ready", "stream-half"),
            ];
            // memcpy and each streaming mode alternate in pairs (memcpy first in odd pairs, last in
            // even ones), each process after its own warm-up, and each stream figure is divided by
            // the memcpy of its own pair: this VM's memcpy moves by 2-3x between minutes.
            int pairs = Math.Max(1, o.StreamPairs);
            Options each = o with { Rounds = Math.Max(1, o.Rounds / pairs) };
            var copies = new List<double>();
            var rings = new List<double>();
            Result copy = new();
            var streamRounds = streams.Select(_ => new List<double>()).ToArray();
            var ratios = streams.Select(_ => new List<double>()).ToArray();
            var runs = new (string Name, Result R)[streams.Length];
            for (int pair = 0; pair < pairs; pair++)
            {
                double pairCopy = 0, pairRing = 0;
                var pairStreams = new double[streams.Length];
                // -1: memcpy, -2: the cross-core ring with no vism in it (what two cores can move
                // between them at this moment: the machine's phase, see "cross-core")
                int[] order = [-1, -2, .. Enumerable.Range(0, streams.Length)];
                if (pair % 2 == 1) Array.Reverse(order);
                foreach (int k in order)
                {
                    if (k == -2)
                    {
                        CrossCore.Summary probe = Probe(PairProbe);
                        pairRing = probe.Ring.Median;
                        rings.Add(pairRing);
                        continue;
                    }
                    if (k < 0)
                    {
                        copy = RunSingle(each, ["memcpy", $"mib={o.StreamMiB}", $"rounds={each.Rounds}", $"region-mib={o.RegionMiB}", $"chunk-kib={o.ChunkKiB}"]);
                        copies.AddRange(copy.List("rounds"));
                        pairCopy = Median(copy.List("rounds"));
                        continue;
                    }
                    Result r = RunPair(each, "stream", new Setting(streams[k].Name, "vhost-user", "vq", 1, 50, true, Mode: streams[k].Mode));
                    runs[k] = (streams[k].Name, r);
                    streamRounds[k].AddRange(r.List("rounds"));
                    pairStreams[k] = Median(r.List("rounds"));
                    if (pairs > 1)
                        Console.WriteLine($"    {streams[k].Mode}: {pairStreams[k]:F1} GB/s; B waited {r.Get("b-waits"):F0} times ({r.Get("b-wait-pct"):F1} % of its time), A {r.Get("a-waits"):F0} times ({r.Get("a-wait-pct"):F1} %); "
                            + $"{r.Get("a-notifies"):F0} / {r.Get("b-notifies"):F0} notifies by A / B; CPU host / A / B {r.Get("host-active"):F0} / {r.Get("a-active"):F0} / {r.Get("b-active"):F0} %");
                }
                for (int k = 0; k < streams.Length; k++) ratios[k].Add(pairStreams[k] / pairCopy);
                if (pairs > 1)
                    Console.WriteLine($"  streaming pair {pair + 1}/{pairs}{(pair % 2 == 1 ? " (reversed)" : "")}: memcpy {pairCopy:F1} GB/s, cross-core ring (no vism) {pairRing:F1} GB/s, "
                        + string.Join(", ", streams.Select((x, k) => $"{x.Mode} {pairStreams[k]:F1} GB/s = {pairStreams[k] / pairCopy:F2}x")));
            }
            Console.WriteLine($"  cross-core probe after streaming (2 s, CPUs {o.CpuA} -> {o.CpuB}): {Probe(TimeSpan.FromSeconds(2))}");
            double[] c = [.. copies];
            double cm = Median(c);
            Console.WriteLine();
            double[] rg = [.. rings];
            Console.WriteLine($"| streaming, {o.ChunkKiB} KiB chunks, {StreamWarmup.TotalSeconds:F0} s warm-up, {pairs} pair(s) of runs | median GB/s | rounds (GB/s) | spread vs median | x memcpy of the same pair: median (range) | CPU host / A / B (% of a core) |");
            Console.WriteLine("|---|---|---|---|---|---|");
            Console.WriteLine($"| single-thread memcpy (one process) | {cm:F2} | {string.Join(" ", c.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)))} | {Spread(c)} | 1.00x | - / - / {copy.Get("cpu"):F0} |");
            Console.WriteLine($"| cross-core ring, no vism (two threads pinned to CPUs {o.CpuA} and {o.CpuB}, spinning on the cursors; {PairProbe.TotalSeconds:F1} s per pair after 1 s warm-up) | {Median(rg):F2} | {string.Join(" ", rg.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)))} (one per pair) | {Spread(rg)} | {Median(rg) / cm:F2}x (of the run's memcpy median) | - |");
            for (int k = 0; k < streams.Length; k++)
            {
                double[] st = [.. streamRounds[k]];
                double[] ra = [.. ratios[k]];
                double sm = Median(st);
                Result r = runs[k].R;
                Console.WriteLine($"| {streams[k].Name}, producer -> consumer through a {o.RegionMiB} MiB region | {sm:F2} ({sm / cm:F2}x memcpy) | {string.Join(" ", st.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)))} | {Spread(st)} | "
                    + $"{Median(ra):F2}x ({ra.Min():F2}-{ra.Max():F2}x; spread {Spread(ra)}) | {r.Get("host-active"):F0} / {r.Get("a-active"):F0} / {r.Get("b-active"):F0} |");
            }
            Console.WriteLine();
            foreach ((string name, Result r) in runs)
                Console.WriteLine($"  {name}: producer A waited for space {r.Get("a-waits"):F0} times ({r.Get("a-wait-pct"):F1} % of its time), consumer B waited for data {r.Get("b-waits"):F0} times ({r.Get("b-wait-pct"):F1} %), {r.Get("a-notifies"):F0} / {r.Get("b-notifies"):F0} notifies by A / B");
        }
        Console.WriteLine();
        Console.WriteLine($"  load average at end: {LoadAverage()}; whole run {started.Elapsed.TotalSeconds:F0} s");
        return 0;
    }

    private static bool Wanted(Options o, string name) => o.Only.Length == 0 || o.Only.Any(w => name.Contains(w, StringComparison.OrdinalIgnoreCase));

    private static int Warmup(Options o) => Math.Max(100, o.RoundTrips / 10);

    private static string LoadAverage() => File.ReadAllText("/proc/loadavg").Trim();

    private static void Row(string name, Result r, double tcpMedian, bool adjacentTcp = false)
    {
        double m = r.Get("rtt-median");
        string ratio = tcpMedian <= 0 ? "-" : adjacentTcp ? $"{m / tcpMedian:F2}x (TCP just before: {tcpMedian:F1} us)" : $"{m / tcpMedian:F2}x";
        string oneWay = r.Has("oneway-median") ? $"{r.Get("oneway-median"):F1} us" : "-";
        // Fewer updates than hops (allowing for the idle period's extra hop): some receivers found
        // the message without an event of their own, so the one-way figure is partly polling.
        if (r.Has("event-hops") && r.Get("event-hops") < 0.98)
            oneWay += $" (polled: {(1 - r.Get("event-hops")) * 100:F0} % of hops had no event)";
        Console.WriteLine($"| {name} | {m:F1} us | {r.Get("rtt-p99"):F1} us | {oneWay} | {ratio} | {CostColumns(r)} |");
    }

    /// <summary>"; not an event figure: ..." when fewer than 98 % of <paramref name="r"/>'s hops
    /// delivered an event (the receiver found the message while polling), else "".</summary>
    private static string NotAnEventFigure(Result r, string hops) =>
        r.Has("event-hops") && r.Get("event-hops") < 0.98 ? $"; not an event figure: {(1 - r.Get("event-hops")) * 100:F0} % of {hops} had no event (the receiver polled)" : "";

    /// <summary>The last three cells of a row: CPU active and idle (host / A / B) and the first event after idle.</summary>
    private static string CostColumns(Result r)
    {
        string active = $"{r.Get("host-active", 0):F0} / {r.Get("a-active"):F0} / {r.Get("b-active"):F0}";
        string idle = r.Has("a-idle") ? $"{r.Get("host-idle", 0):F2} / {r.Get("a-idle"):F2} / {r.Get("b-idle"):F2}" : "-";
        string first = r.Has("first-oneway") ? $"{r.Get("first-oneway"):F0} us" : "-";
        return $"{active} | {idle} | {first}";
    }

    /// <summary>A row measured in <paramref name="ism"/>.Length pairs with <paramref name="tcp"/>: the
    /// medians over the pairs, and the pairs' ratios (median and range); the CPU and idle columns are
    /// the last run's.</summary>
    private static void PairedRow(string name, Result last, double[] ism, double[] tcp)
    {
        double[] ratios = [.. ism.Zip(tcp, (i, t) => i / t)];
        string runs = string.Join(" ", ism.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)));
        string ratio = $"**{Median(ratios):F2}x** median of {ratios.Length} pairs ({ratios.Min():F2}-{ratios.Max():F2}x; at or under 0.5x in {ratios.Count(r => r <= 0.5)}, at or under 1.0x in {ratios.Count(r => r <= 1.0)}; TCP {Median(tcp):F1} us, {tcp.Min():F1}-{tcp.Max():F1})";
        Console.WriteLine($"| {name} | {Median(ism):F1} us (runs: {runs}) | {last.Get("rtt-p99"):F1} us (last run) | {(last.Has("oneway-median") ? $"{last.Get("oneway-median"):F1} us" : "-")} | {ratio} | {CostColumns(last)} |");
    }

    private static string Spread(double[] rounds)
    {
        double m = Median(rounds);
        return $"{(rounds.Min() / m - 1) * 100:+0;-0} % .. {(rounds.Max() / m - 1) * 100:+0;-0} %";
    }

    // ---- parent: processes -------------------------------------------------------------------

    /// <summary>What a peer printed: <c>key=value</c> pairs.</summary>
    private sealed class Result
    {
        public readonly Dictionary<string, string> Values = new();
        public bool Has(string k) => Values.ContainsKey(k);
        public double Get(string k, double fallback = double.NaN) => Values.TryGetValue(k, out string? v) ? double.Parse(v, CultureInfo.InvariantCulture) : fallback;
        public double[] List(string k) => Values[k].Split(',').Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        public void Add(string line)
        {
            foreach (string kv in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                if (kv.IndexOf('=') is > 0 and var eq) Values[kv[..eq]] = kv[(eq + 1)..];
        }
    }

    private sealed class Child : IDisposable
    {
        private readonly Process _p;
        public Child(string cpu, IEnumerable<string> args)
        {
            var psi = new ProcessStartInfo("taskset") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(cpu);
            string self = Environment.ProcessPath!;
            psi.ArgumentList.Add(self);
            if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(EventPath).Assembly.Location);
            psi.ArgumentList.Add("event-path-peer");
            foreach (string a in args) psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
        }

        /// <summary>The next line that starts with <paramref name="prefix"/> (others are echoed).</summary>
        public string Expect(string prefix)
        {
            while (true)
            {
                string? line = _p.StandardOutput.ReadLine() ?? throw new InvalidOperationException($"a peer exited (code {(_p.WaitForExit(5000) ? _p.ExitCode : -1)}) before saying '{prefix}'");
                if (line.StartsWith(prefix, StringComparison.Ordinal)) return line[prefix.Length..].Trim();
                Console.Error.WriteLine($"  peer: {line}");
            }
        }

        public void Say(string line)
        {
            _p.StandardInput.WriteLine(line);
            _p.StandardInput.Flush();
        }

        public void Dispose()
        {
            if (!_p.WaitForExit(30_000)) _p.Kill();
            _p.Dispose();
        }
    }

    private static Result RunSingle(Options o, string[] args)
    {
        using var c = new Child(o.CpuB, args);
        var r = new Result();
        r.Add(c.Expect("result"));
        return r;
    }

    private static Result RunPair(Options o, string kind, Setting? s)
    {
        var r = new Result();
        string n = $"n={o.RoundTrips}", warm = $"warm={Warmup(o)}", idle = $"idle={o.IdleSeconds}";
        switch (kind)
        {
            case "tcp":
            {
                using var b = new Child(o.CpuB, ["tcp", "role=b", n, warm]);
                string port = b.Expect("port");
                using var a = new Child(o.CpuA, ["tcp", "role=a", n, warm, $"port={port}"]);
                r.Add(a.Expect("result"));
                r.Add(b.Expect("result"));
                return r;
            }
            case "eventfd":
            {
                int ping = eventfd(0, 0x800), pong = eventfd(0, 0x800); // EFD_NONBLOCK without EFD_CLOEXEC: inherited by the peers
                try
                {
                    using var b = new Child(o.CpuB, ["eventfd", "role=b", n, warm, $"ping={ping}", $"pong={pong}"]);
                    using var a = new Child(o.CpuA, ["eventfd", "role=a", n, warm, $"ping={ping}", $"pong={pong}"]);
                    r.Add(a.Expect("result"));
                    r.Add(b.Expect("result"));
                }
                finally
                {
                    Fd.Own(ping).Dispose();
                    Fd.Own(pong).Dispose();
                }
                return r;
            }
        }
        using var host = new BenchHost(s!, kind == "stream" ? (ulong)o.RegionMiB << 20 : 4096);
        string[] common = [$"transport={s!.Transport}", $"events={s.Events}", $"spin={s.SpinUs}", $"doorbell={(s.Doorbell ? 1 : 0)}", $"queue-calls={(s.QueueCalls ? 1 : 0)}", $"mode={s.Mode}", n, warm, idle,
            $"mib={o.StreamMiB}", $"rounds={o.Rounds}", $"size={host.RegionBytes}", $"chunk-kib={o.ChunkKiB}"];
        using var pa = new Child(o.CpuA, ["ism", "role=a", $"endpoint={host.Endpoints[0]}", .. common]);
        string token = pa.Expect("token");
        using var pb = new Child(o.CpuB, ["ism", "role=b", $"endpoint={host.Endpoints[1]}", $"token={token}", .. common]);
        pb.Expect("ready");
        long cpu0 = ProcessCpuMicroseconds();
        var wall = Stopwatch.StartNew();
        pa.Say("go");
        r.Add(pa.Expect("active"));
        if (!s.Mode.StartsWith("stream", StringComparison.Ordinal)) r.Add(pb.Expect("active"));
        double activeWall = wall.Elapsed.TotalMicroseconds;
        r.Values["host-active"] = (100.0 * (ProcessCpuMicroseconds() - cpu0) / activeWall).ToString(CultureInfo.InvariantCulture);
        if (!s.Mode.StartsWith("stream", StringComparison.Ordinal) && s.Mode != "spin")
        {
            // The peers now sit in their waits for o.IdleSeconds; the host is idle with them.
            cpu0 = ProcessCpuMicroseconds();
            wall.Restart();
            r.Add(pa.Expect("idle"));
            r.Values["host-idle"] = (100.0 * (ProcessCpuMicroseconds() - cpu0) / wall.Elapsed.TotalMicroseconds).ToString(CultureInfo.InvariantCulture);
        }
        r.Add(pa.Expect("result"));
        r.Add(pb.Expect("result"));
        if (s.Mode == "events")
        {
            // Each round trip is two hops; a hop whose receiver found the message while it returned
            // on an event left over from an earlier hop (it polled) delivered no update of its own.
            double hops = 2.0 * (o.RoundTrips + Warmup(o));
            r.Values["event-hops"] = (host.CounterSum("events.updates") / hops).ToString(CultureInfo.InvariantCulture);
        }
        return r;
    }

    /// <summary>The vism host of one setting: two devices (ALLOC on one, ATTACH on the other) on
    /// <see cref="Setting.Loops"/> loops, served by the setting's transport (also the channel benchmark's host).</summary>
    internal sealed class BenchHost : IDisposable
    {
        private readonly string _dir = Path.Combine("/tmp", $"vism-event-path-{Environment.ProcessId}");
        private readonly EventLoop[] _loops;
        private readonly IsmHost _host = new(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        private readonly List<IDisposable> _cleanup = [];
        private readonly List<Func<Task>> _stops = [];
        private readonly List<DeviceCounters> _counters = [];

        /// <summary>Two devices with <paramref name="events"/> (vq, irq) on <paramref name="loops"/> loops,
        /// served by <paramref name="transport"/> with the transport's defaults.</summary>
        public BenchHost(string transport, string events, int loops, ulong regionBytes)
            : this(new Setting(transport, transport, events, loops, 0, true), regionBytes)
        {
        }

        public BenchHost(Setting s, ulong regionBytes)
        {
            Directory.CreateDirectory(_dir);
            RegionBytes = regionBytes;
            ulong regionSize = Math.Max(1UL << 20, regionBytes);
            _loops = Enumerable.Range(0, s.Loops).Select(i => new EventLoop($"vism-loop-{i}") { BusyPoll = TimeSpan.FromMicroseconds(s.BusyPollUs) }).ToArray();
            var endpoints = new List<string>();
            var devIds = new List<ulong>();
            for (int i = 0; i < 2; i++)
            {
                EventLoop loop = _loops[i % _loops.Length];
                DeviceDescription d = DeviceLayout.Compute($"ism{i}", Virtio.IsmDeviceId, 4 * regionSize, regionSize, 1);
                IEventChannel events = s.Events == "vq"
                    ? new VqEventChannel(new VqEventOptions(), d, loop, NullLogger<VqEventChannel>.Instance)
                    : new IrqEventChannel(new IrqEventOptions(), d, loop, NullLogger<IrqEventChannel>.Instance);
                var host = new HostDescription { Gid = 1, StateDirectory = _dir, SocketDirectory = _dir };
                var counters = new DeviceCounters();
                _counters.Add(counters);
                // memfd (vism's in-memory backend, 4 KiB pages) or Memory.Hugetlb's 2 MiB pages.
                IMemoryBackend memory = s.Memory == "hugetlb"
                    ? new HugetlbMemoryBackend(new HugetlbMemoryOptions(), d, host, counters, NullLogger<HugetlbMemoryBackend>.Instance)
                    : new InMemoryBackend(64UL << 20);
                _cleanup.Add((IDisposable)memory);
                IsmDevice device = _host.AddDevice(d, loop, memory, events, counters);
                devIds.Add(device.DevId);
                if (s.Transport == "mmio")
                {
                    var t = new MmioTransport(new MmioOptions { Vectors = 1 }, d, host, loop, counters, NullLogger<MmioTransport>.Instance);
                    loop.InvokeAsync(() => t.Start(device)).GetAwaiter().GetResult();
                    _stops.Add(() => loop.InvokeAsync(async () => { await t.DisposeAsync(); return true; }));
                    endpoints.Add(t.Endpoint);
                }
                else
                {
                    var options = new VhostUserOptions { Vectors = 1 };
                    if (s.PollFast is { } fast) options.NotifyPollFast = fast;
                    if (s.PollSlow is { } slow) options.NotifyPollSlow = slow;
                    var t = new VhostUserTransport(options, d, host, loop, counters, NullLogger<VhostUserTransport>.Instance);
                    loop.InvokeAsync(() => t.Start(device)).GetAwaiter().GetResult();
                    _stops.Add(() => loop.InvokeAsync(async () => { await t.DisposeAsync(); return true; }));
                    endpoints.Add(t.Endpoint);
                }
            }
            Endpoints = endpoints;
            DevIds = devIds;
        }

        public ulong RegionBytes { get; }

        public IReadOnlyList<string> Endpoints { get; }

        public IReadOnlyList<ulong> DevIds { get; }

        /// <summary>A counter summed over both devices.</summary>
        public long CounterSum(string name) => _counters.Sum(c => c.Get(name));

        public void Dispose()
        {
            if (Environment.GetEnvironmentVariable("VISM_BENCH_COUNTERS") == "1")
                foreach (DeviceCounters c in _counters)
                    Console.Error.WriteLine("  counters: " + string.Join(", ", c.Snapshot().OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}")));
            foreach (Func<Task> stop in _stops) stop().GetAwaiter().GetResult();
            _host.Dispose();
            foreach (IDisposable d in _cleanup) d.Dispose();
            foreach (EventLoop l in _loops) l.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }

    // ---- peers -------------------------------------------------------------------------------

    public static int Peer(string[] args)
    {
        var a = new Dictionary<string, string>();
        foreach (string kv in args[1..])
            if (kv.IndexOf('=') is > 0 and var eq) a[kv[..eq]] = kv[(eq + 1)..];
        int Int(string k) => int.Parse(a[k], CultureInfo.InvariantCulture);
        bool isA = a.GetValueOrDefault("role") == "a";
        switch (args[0])
        {
            case "memcpy": Memcpy(Int("mib"), Int("rounds"), Int("region-mib"), Int("chunk-kib")); return 0;
            case "tcp": Tcp(isA, Int("n"), Int("warm"), a.GetValueOrDefault("port")); return 0;
            case "eventfd": EventFdPeer(isA, Int("n"), Int("warm"), Int("ping"), Int("pong")); return 0;
            case "ism": Ism(isA, a); return 0;
            default: Console.Error.WriteLine($"unknown peer {args[0]}"); return 2;
        }
    }

    private static long Now() => Stopwatch.GetTimestamp();

    private static double Us(long ticks) => ticks * 1_000_000.0 / Stopwatch.Frequency;

    private static void Report(string tag, params (string Key, double Value)[] values) =>
        Console.WriteLine($"{tag} " + string.Join(' ', values.Select(v => $"{v.Key}={v.Value.ToString("R", CultureInfo.InvariantCulture)}")));

    private static (string, double)[] Stats(string prefix, List<double> samples)
    {
        samples.Sort();
        return [($"{prefix}-median", Pct(samples, 50)), ($"{prefix}-p99", Pct(samples, 99))];
    }

    private static double Pct(List<double> sorted, double p) => sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)(sorted.Count * p / 100))];

    private static double Median(double[] values) => Vism.Benchmarks.Stats.Median(values);

    private static void Tcp(bool isA, int n, int warm, string? port)
    {
        var buf = new byte[Payload];
        long cpu0;
        if (!isA)
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            Console.WriteLine($"port {((IPEndPoint)listener.LocalEndPoint!).Port}");
            using Socket s = listener.Accept();
            s.NoDelay = true;
            cpu0 = ProcessCpuMicroseconds();
            long t0 = Now();
            for (int i = 0; i < n + warm; i++)
            {
                ReadFully(s, buf);
                s.Send(buf);
            }
            Report("result", ("b-active", CpuPercent(cpu0, t0)));
            return;
        }
        using var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        c.Connect(IPAddress.Loopback, int.Parse(port!, CultureInfo.InvariantCulture));
        var rtt = new List<double>(n);
        cpu0 = ProcessCpuMicroseconds();
        long start = Now();
        for (int i = 0; i < n + warm; i++)
        {
            long t = Now();
            c.Send(buf);
            ReadFully(c, buf);
            if (i >= warm) rtt.Add(Us(Now() - t));
        }
        Report("result", [.. Stats("rtt", rtt), ("a-active", CpuPercent(cpu0, start))]);
    }

    private static void ReadFully(Socket s, byte[] buf)
    {
        for (int got = 0; got < buf.Length;)
        {
            int r = s.Receive(buf, got, buf.Length - got, SocketFlags.None);
            if (r <= 0) throw new IOException("TCP peer closed");
            got += r;
        }
    }

    private static void EventFdPeer(bool isA, int n, int warm, int pingFd, int pongFd)
    {
        using var ping = EventFd.Adopt(new SafeFileHandle(pingFd, ownsHandle: true));
        using var pong = EventFd.Adopt(new SafeFileHandle(pongFd, ownsHandle: true));
        var rtt = new List<double>(n);
        long cpu0 = ProcessCpuMicroseconds(), start = Now();
        for (int i = 0; i < n + warm; i++)
        {
            if (isA)
            {
                long t = Now();
                ping.Signal();
                if (pong.Wait(Patience) == 0) throw new TimeoutException("eventfd pong");
                if (i >= warm) rtt.Add(Us(Now() - t));
            }
            else
            {
                if (ping.Wait(Patience) == 0) throw new TimeoutException("eventfd ping");
                pong.Signal();
            }
        }
        if (isA) Report("result", [.. Stats("rtt", rtt), ("a-active", CpuPercent(cpu0, start))]);
        else Report("result", ("b-active", CpuPercent(cpu0, start)));
    }

    private static unsafe void Memcpy(int mib, int rounds, int regionMiB, int chunkKiB)
    {
        int chunk = chunkKiB << 10;
        byte[] src = new byte[chunk];
        new Random(1).NextBytes(src);
        nint dst = (nint)NativeMemoryAlloc(regionMiB << 20);
        int slots = ((regionMiB << 20) - 4096) / chunk;
        long chunks = (long)mib * (1 << 20) / chunk;
        var perRound = new List<double>();
        long warmUntil = Now() + (long)(StreamWarmup.TotalSeconds * Stopwatch.Frequency), cpu0 = 0, start = 0;
        for (bool warm = true; perRound.Count < rounds;)
        {
            if (warm && Now() >= warmUntil) { warm = false; cpu0 = ProcessCpuMicroseconds(); start = Now(); } // the same warm-up as the streaming consumer's
            long t = Now();
            for (long c = 0; c < chunks; c++)
                src.AsSpan().CopyTo(Span(dst + 4096 + (nint)(c % slots) * chunk, chunk));
            if (!warm) perRound.Add(chunks * chunk / (Us(Now() - t) * 1000));
        }
        Console.WriteLine($"result cpu={CpuPercent(cpu0, start).ToString("R", CultureInfo.InvariantCulture)} rounds=" + string.Join(',', perRound.Select(x => x.ToString("F3", CultureInfo.InvariantCulture))));
    }

    private static unsafe void* NativeMemoryAlloc(int bytes)
    {
        void* p = NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        new Span<byte>(p, bytes).Clear();
        return p;
    }

    private static unsafe Span<byte> Span(nint at, int length) => new((void*)at, length);

    private static unsafe ref long Cell(nint at) => ref *(long*)at;

    /// <summary>One ISM peer: VMM and driver of its device through the Driver library.</summary>
    private static void Ism(bool isA, Dictionary<string, string> a)
    {
        int n = int.Parse(a["n"], CultureInfo.InvariantCulture), warm = int.Parse(a["warm"], CultureInfo.InvariantCulture);
        int idle = int.Parse(a["idle"], CultureInfo.InvariantCulture);
        string mode = a["mode"];
        bool vq = a["events"] == "vq";
        var clientOptions = new IsmClientOptions { SpinBeforeBlock = TimeSpan.FromMicroseconds(int.Parse(a["spin"], CultureInfo.InvariantCulture)) };
        using var ram = new GuestRam(16 << 20);
        IDriverTransport transport = a["transport"] == "mmio"
            ? MmioVmmClient.Connect(a["endpoint"], ram, new MmioVmmOptions { NotifyDoorbells = a["doorbell"] == "1", QueueCallFds = a.GetValueOrDefault("queue-calls", "1") == "1" })
            : VhostUserFrontend.Connect(a["endpoint"], ram, new VhostUserFrontendOptions { VectorCount = 1, NotifyDoorbell = a["doorbell"] == "1" });
        using IsmClient client = IsmClient.Start(transport, clientOptions);
        ulong size = ulong.Parse(a["size"], CultureInfo.InvariantCulture);
        ulong offset;
        if (isA)
        {
            AllocReply r = client.Alloc(size);
            if (!r.Ok) throw new InvalidOperationException("ALLOC failed");
            offset = r.Offset;
            Console.WriteLine($"token {r.Token:x}");
        }
        else
        {
            AttachReply r = client.Attach(ulong.Parse(a["token"], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
            if (!r.Ok) throw new InvalidOperationException("ATTACH failed");
            offset = r.Offset;
        }
        if (!vq && client.EventVector(offset, 0) != IsmControl.AckOk) throw new InvalidOperationException("EVENT_VECTOR failed");
        nint region = RegionAddress(client, offset, (int)size);
        Span<ulong> offsets = stackalloc ulong[64];
        Console.WriteLine("ready");
        if (isA && Console.ReadLine() != "go") throw new InvalidOperationException("expected go");

        // Wait until the 8-byte cell at `at` holds `value`: spinning (mode spin) or on events.
        void Await(int at, long value, TimeSpan timeout, Span<ulong> buffer)
        {
            long deadline = Now() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
            while (Volatile.Read(ref Cell(region + at)) != value)
            {
                if (Now() > deadline) throw new TimeoutException($"peer {(isA ? 'A' : 'B')}: no update within {timeout} (mode {mode})");
                if (mode == "spin") { Thread.SpinWait(1); continue; }
                if (vq) client.WaitEvent(buffer, TimeSpan.FromMilliseconds(100));
                else client.WaitVector(0, TimeSpan.FromMilliseconds(100));
            }
        }

        void Send(int at, long seq)
        {
            Cell(region + at + 8) = Stopwatch.GetTimestamp();
            Span(region + at + 16, Payload - 16).Fill((byte)seq);
            Volatile.Write(ref Cell(region + at), seq);
            if (mode != "spin") client.Notify(offset);
        }

        if (mode.StartsWith("stream", StringComparison.Ordinal))
        {
            Stream(isA, client, offset, region, size, a, offsets);
            return;
        }
        var rtt = new List<double>(n);
        var oneWay = new List<double>(n);
        long cpu0 = ProcessCpuMicroseconds(), start = Now();
        for (long i = 1; i <= n + warm; i++)
        {
            if (isA)
            {
                long t = Now();
                Send(PingAt, i);
                Await(PongAt, i, Patience, offsets);
                if (i > warm) rtt.Add(Us(Now() - t));
            }
            else
            {
                Await(PingAt, i, Patience, offsets);
                if (i > warm) oneWay.Add(Us(Now() - Volatile.Read(ref Cell(region + PingAt + 8))));
                Send(PongAt, i);
            }
        }
        if (isA) Report("active", [.. Stats("rtt", rtt), ("a-active", CpuPercent(cpu0, start))]);
        else Report("active", [.. Stats("oneway", oneWay), ("b-active", CpuPercent(cpu0, start))]);
        if (mode == "spin")
        {
            Report("result");
            return;
        }
        // Idle: both sit in their waits; then A sends one ping and B reports its one-way latency.
        long last = n + warm + 1;
        cpu0 = ProcessCpuMicroseconds();
        start = Now();
        if (isA)
        {
            long until = Now() + idle * Stopwatch.Frequency;
            while (Now() < until)
                if (vq) client.WaitEvent(offsets, TimeSpan.FromMilliseconds(Math.Max(1, Us(until - Now()) / 1000)));
                else client.WaitVector(0, TimeSpan.FromMilliseconds(Math.Max(1, Us(until - Now()) / 1000)));
            Report("idle", ("a-idle", CpuPercent(cpu0, start)));
            long t = Now();
            Send(PingAt, last);
            Await(PongAt, last, Patience, offsets);
            Report("result", ("first-rtt", Us(Now() - t)));
        }
        else
        {
            Await(PingAt, last, TimeSpan.FromSeconds(idle + 20), offsets);
            double first = Us(Now() - Volatile.Read(ref Cell(region + PingAt + 8)));
            double idleCpu = CpuPercent(cpu0, start);
            Send(PongAt, last);
            Report("result", ("first-oneway", first), ("b-idle", idleCpu));
        }
    }

    private static unsafe nint RegionAddress(IsmClient client, ulong offset, int size)
    {
        fixed (byte* p = client.Region(offset, size)) return (nint)p;
    }

    /// <summary>Streaming: A produces chunks (64 KiB by default) into a ring in the region, B consumes them, and
    /// each waits on eventq events when the ring is full (A) or empty (B). Mode <c>stream</c>: each
    /// side notifies every 16 chunks. Mode <c>stream-on-demand</c>: a side about to wait announces it
    /// (the cursor value it waits for, then a wait sequence number in the region, then a full fence,
    /// then a last look at the ring, as virtio's event suppression), and the other notifies only when
    /// it sees a new announcement after publishing (its own store, a full fence, then the load): no
    /// lost wake-up, and no notify, no vism turn, while both run. Mode <c>stream-half</c>: the same,
    /// but a waiter asks for half the ring (B: half a ring of chunks ready; A: half a ring free), as
    /// virtio's event index asks for an interrupt at a later used index: the other side notifies once
    /// its cursor reaches the announced value. Without it the faster consumer wakes for every chunk
    /// and then reads right behind the producer (every line moves from core to core while the
    /// producer still writes next to it), the producer slows, the consumer waits more: the collapse
    /// to a third of the speed seen in some runs (docs/benchmarks.md). Region layout: produced +0,
    /// consumed +64, stop +128, B's wait sequence +192, A's +256, B's wanted cursor +320, A's +384;
    /// data from +4096. B warms up for <see cref="StreamWarmup"/> (at least one round), then times
    /// the rounds and raises the stop flag. Each side reports how often and how long it waited for
    /// the other and how often it notified.</summary>
    private static void Stream(bool isA, IsmClient client, ulong offset, nint region, ulong size, Dictionary<string, string> a, Span<ulong> buffer)
    {
        const int Batch = 16;
        int chunk = int.Parse(a["chunk-kib"], CultureInfo.InvariantCulture) << 10;
        int mib = int.Parse(a["mib"], CultureInfo.InvariantCulture), rounds = int.Parse(a["rounds"], CultureInfo.InvariantCulture);
        bool half = a["mode"] == "stream-half", onDemand = half || a["mode"] == "stream-on-demand";
        long slots = ((long)size - 4096) / chunk;
        long perRound = (long)mib * (1 << 20) / chunk;
        byte[] local = new byte[chunk];
        new Random(isA ? 1 : 2).NextBytes(local);
        nint produced = region, consumed = region + 64, stop = region + 128;
        nint myWaits = region + (isA ? 256 : 192), theirWaits = region + (isA ? 192 : 256);
        ulong[] events = new ulong[buffer.Length];
        long theirWaitsSeen = 0;
        var roundRates = new List<double>();
        long waits = 0, waitTicks = 0, notifies = 0, warmUntil = Now() + (long)(StreamWarmup.TotalSeconds * Stopwatch.Frequency);
        long cpu0 = ProcessCpuMicroseconds(), start = Now(), roundStart = Now(), measuredFrom = -1;

        nint myTarget = region + (isA ? 384 : 320), theirTarget = region + (isA ? 320 : 384);
        // How far ahead of a waiter the other side must be before the waiter is woken (chunks):
        // one in stream and stream-on-demand, half the ring in stream-half (a low-watermark).
        long lag = half ? Math.Max(1, slots / 2) : 1;

        // target: the other side's cursor value this wait needs, announced with the wait.
        void Wait(Func<bool> ready, long target)
        {
            long w = Now();
            waits++;
            if (onDemand)
            {
                Volatile.Write(ref Cell(myTarget), target);
                Interlocked.Increment(ref Cell(myWaits)); // announce, with a full fence
                if (ready()) { waitTicks += Now() - w; return; }
            }
            while (!ready())
                client.WaitEvent(events, TimeSpan.FromMilliseconds(100));
            waitTicks += Now() - w;
        }

        void Published(long count)
        {
            if (onDemand)
            {
                Interlocked.MemoryBarrier(); // the count before the other side's announcement is read
                long seen = Volatile.Read(ref Cell(theirWaits));
                if (seen == theirWaitsSeen) return;
                if (count < Volatile.Read(ref Cell(theirTarget))) return; // not yet what the waiter asked for
                theirWaitsSeen = seen;
            }
            else if (count % Batch != 0) return;
            client.Notify(offset);
            notifies++;
        }

        // Each side re-reads the other's cursor only when its last view says it must wait: a cursor
        // read at every chunk pulls the owner's line across, and the owner's next store has to take
        // it back (the channel's writer does the same, docs/channel.md).
        long consumedSeen = 0, producedSeen = 0;
        for (long c = 0; ; c++)
        {
            if (isA)
            {
                long next = c;
                if (next - consumedSeen >= slots && next - (consumedSeen = Volatile.Read(ref Cell(consumed))) >= slots)
                    Wait(() => next - (consumedSeen = Volatile.Read(ref Cell(consumed))) <= slots - lag || Volatile.Read(ref Cell(stop)) != 0, next - slots + lag);
                if (Volatile.Read(ref Cell(stop)) != 0) break;
                local.AsSpan().CopyTo(Span(region + 4096 + (nint)(c % slots) * chunk, chunk));
                Volatile.Write(ref Cell(produced), c + 1);
                Published(c + 1);
            }
            else
            {
                long next = c;
                if (producedSeen <= c && (producedSeen = Volatile.Read(ref Cell(produced))) <= c)
                    Wait(() => (producedSeen = Volatile.Read(ref Cell(produced))) >= next + lag, next + lag);
                Span(region + 4096 + (nint)(c % slots) * chunk, chunk).CopyTo(local);
                Volatile.Write(ref Cell(consumed), c + 1);
                Published(c + 1);
                if ((c + 1) % perRound == 0)
                {
                    long now = Now();
                    if (measuredFrom >= 0) roundRates.Add(perRound * chunk / (Us(now - roundStart) * 1000));
                    else if (now >= warmUntil) { measuredFrom = c + 1; waits = 0; waitTicks = 0; notifies = 0; cpu0 = ProcessCpuMicroseconds(); start = now; }
                    roundStart = now;
                    if (roundRates.Count == rounds)
                    {
                        Volatile.Write(ref Cell(stop), 1);
                        client.Notify(offset);
                        break;
                    }
                }
            }
        }
        double waitPct = 100.0 * waitTicks / Math.Max(1, Now() - start);
        if (isA)
        {
            // A cannot tell when B's timed rounds began: its figures cover the whole run.
            Report("active", ("a-active", CpuPercent(cpu0, start)), ("a-waits", waits), ("a-wait-pct", waitPct), ("a-notifies", notifies));
            Report("result");
        }
        else
            Console.WriteLine($"result b-active={CpuPercent(cpu0, start).ToString("R", CultureInfo.InvariantCulture)} b-waits={waits} b-wait-pct={waitPct.ToString("F1", CultureInfo.InvariantCulture)} " +
                $"b-notifies={notifies} warm-chunks={measuredFrom} rtt-median=0 rounds=" + string.Join(',', roundRates.Select(x => x.ToString("F3", CultureInfo.InvariantCulture))));
    }

    private static double CpuPercent(long cpu0, long start) => 100.0 * (ProcessCpuMicroseconds() - cpu0) / Us(Now() - start);

    [DllImport("libc", SetLastError = true)]
    private static extern int eventfd(uint initval, int flags);

    private static long ProcessCpuMicroseconds() => CpuTime.ProcessMicroseconds();
}
