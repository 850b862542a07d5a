using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Vism.Channel;
using Vism.Driver;

namespace Vism.Benchmarks;

/// <summary>
/// vism channel vs TCP loopback between the same two processes (docs/benchmarks.md, "Channel"):
/// this process serves two devices as <c>vism run</c> does by default (both on one device loop, the
/// transport's socket, memfd region memory (Memory.Hugetlb's 2 MiB pages with <c>--memory hugetlb</c>),
/// the eventq unless <c>irq</c> is asked for; <see cref="EventPath.BenchHost"/>) and
/// starts two peer processes, each pinned to its own core with taskset, each reaching its device
/// through the socket. The peers open a TCP connection and a channel to each other and measure:
/// bulk throughput (client to server, then a 1-byte ack) of TCP, the channel event-driven and the
/// channel polling, and 64-byte request/response round trips event-driven (TCP: blocking sockets;
/// channel: the defaults, then SpinTime 0 so every wait is announced and ends on notify -> update
/// event) and polling (TCP: non-blocking sockets spun on; channel: cursors spun on). A second pair
/// of peers, whose drivers sleep at once on the update event (<c>SpinBeforeBlock</c> 0), repeats the
/// event-driven round trips with no spinning anywhere, and a third pair does so on a host whose loop
/// busy-polls.
/// Each comparison runs in R alternating rounds (<c>--rounds</c>): a round measures TCP and the
/// channel one after the other on a share of the bytes or round trips, in list order in even rounds
/// and reversed in odd ones, and each channel figure is divided by the TCP figure of its own round.
/// A row gives the median of those per-round ratios and their range (this machine's speed moves 2-3x
/// between minutes, so one TCP measurement followed by one channel measurement is not a ratio).
/// Not BenchmarkDotNet: it needs two processes on two cores.
/// Command:
/// <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- channel [all|vhost-user|mmio] [MiB] [round trips] [loops] [vq|irq] [--rounds R] [--memory memfd|hugetlb] [--read-gap KIB (the readers' ChannelOptions.ReadGap; 0: off)] [--region-mib MIB (8)]</c>
/// (default: both transports, 1024 MiB per side in all, 5000 round trips event-driven and 50000
/// polling per phase in all, 1 device loop, vq, 5 rounds, memfd).
/// </summary>
public static class ChannelBenchmark
{
    private const int Message = 64;
    private const int Chunk = 256 * 1024;
    private const int Warmup = 1000;
    private const string Usage = "channel [all|vhost-user|mmio] [MiB] [round trips] [loops] [vq|irq] [--rounds R] [--memory memfd|hugetlb] [--read-gap KIB] [--region-mib MIB]";

    /// <summary>The run's settings: MiB and round trips are totals per side and phase, split over the rounds.</summary>
    internal sealed record Options(string[] Transports, int MiB, int Trips, int Loops, string Events, int Rounds, string Memory = "memfd", long ReadGap = -1, int RegionMiB = 8);

    public static int Run(string[] args)
    {
        Options o;
        try
        {
            o = Parse(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"channel: {e.Message}; usage: {Usage}");
            return 2;
        }
        int failed = 0;
        foreach (string transport in o.Transports)
        {
            failed |= RunAsync(transport, o, Full).GetAwaiter().GetResult();
            failed |= RunAsync(transport, o with { MiB = 0 }, NoSpin).GetAwaiter().GetResult();
            failed |= RunAsync(transport, o with { MiB = 0 }, NoSpinBusyPoll).GetAwaiter().GetResult();
        }
        return failed;
    }

    /// <summary>The positional arguments in their old order, and <c>--rounds R</c> (or <c>--rounds=R</c>)
    /// anywhere; a bad value throws an <see cref="ArgumentException"/> naming it.</summary>
    internal static Options Parse(string[] args)
    {
        var positional = new List<string>();
        int rounds = 5;
        string memory = "memfd";
        long readGap = -1; // the channel's default
        int regionMiB = 8;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (ValueOf("--rounds", ref i) is { } r)
                rounds = Whole(r, "--rounds", 1, 1000);
            else if (ValueOf("--memory", ref i) is { } m)
            {
                memory = m;
                if (memory is not ("memfd" or "hugetlb"))
                    throw new ArgumentException($"--memory '{memory}' is not memfd or hugetlb");
            }
            else if (ValueOf("--read-gap", ref i) is { } g)
                readGap = (long)Whole(g, "--read-gap KiB", 0, 1 << 20) << 10;
            else if (ValueOf("--region-mib", ref i) is { } rm)
                regionMiB = Whole(rm, "--region-mib", 1, 256);
            else if (a.StartsWith("--", StringComparison.Ordinal))
                throw new ArgumentException($"unknown option '{a}'");
            else
                positional.Add(a);
        }
        if (positional.Count > 5)
            throw new ArgumentException($"too many arguments ('{positional[5]}')");
        string transport = positional.Count > 0 ? positional[0] : "all";
        if (transport is not ("all" or "vhost-user" or "mmio"))
            throw new ArgumentException($"transport '{transport}' is not all, vhost-user or mmio");
        int mib = positional.Count > 1 ? Whole(positional[1], "MiB", 0, 1 << 16) : 1024;
        int trips = positional.Count > 2 ? Whole(positional[2], "round trips", 1, 1_000_000) : 5000;
        int loops = positional.Count > 3 ? Whole(positional[3], "loops", 1, 16) : 1;
        string events = positional.Count > 4 ? positional[4] : "vq";
        if (events is not ("vq" or "irq"))
            throw new ArgumentException($"events kind '{events}' is not vq or irq");
        if (trips < rounds)
            throw new ArgumentException($"{trips} round trips cannot be split over {rounds} rounds");
        if (mib > 0 && BulkPerRound(mib, rounds) == 0)
            throw new ArgumentException($"{mib} MiB split over {rounds} rounds leaves less than one {Chunk >> 10} KiB write per round");
        return new Options(transport == "all" ? ["vhost-user", "mmio"] : [transport], mib, trips, loops, events, rounds, memory, readGap, regionMiB);

        // The value of option `name` at args[i] (`name V`, which moves i on, or `name=V`); null when
        // args[i] is another argument.
        string? ValueOf(string name, ref int i)
        {
            if (args[i] == name)
                return i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{name} needs a value");
            return args[i].StartsWith(name + "=", StringComparison.Ordinal) ? args[i][(name.Length + 1)..] : null;
        }

        static int Whole(string value, string what, int min, int max) =>
            int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= min && n <= max
                ? n
                : throw new ArgumentException($"{what} '{value}' is not a whole number from {min} to {max}");
    }

    /// <summary>Bytes each side sends per round: the total split over the rounds, in whole 256 KiB writes.</summary>
    private static long BulkPerRound(int mib, int rounds) => ((long)mib << 20) / rounds / Chunk * Chunk;

    /// <summary>One pair of peers on a fresh host: <see cref="Full"/> measures everything with the
    /// driver's defaults; <see cref="NoSpin"/> opens the devices with <c>SpinBeforeBlock</c> 0 and
    /// measures only the event-driven round trips, where every channel wait then sleeps at once;
    /// <see cref="NoSpinBusyPoll"/> is the same with vism's loop busy-polling 200 us after work
    /// (<c>busy-poll = "200us"</c>): the host spins instead of the peers.</summary>
    private static async Task<int> RunAsync(string transport, Options o, string variant)
    {
        // vism's defaults: both devices on one loop (`loops = 1`), the eventq (or irq, when asked), the transport's defaults.
        using var host = new EventPath.BenchHost(
            new EventPath.Setting(transport, transport, o.Events, o.Loops, 0, true, BusyPollUs: variant == NoSpinBusyPoll ? 200 : 0, Memory: o.Memory), (ulong)o.RegionMiB << 20);
        long bulk = o.MiB > 0 ? BulkPerRound(o.MiB, o.Rounds) : 0;
        int trips = o.Trips / o.Rounds;
        ulong ringSize = ChannelLayout.RingSize((ulong)o.RegionMiB << 20);
        long gapInEffect = Math.Min(o.ReadGap < 0 ? new ChannelOptions().ReadGap : o.ReadGap, (long)ringSize / 2);
        string gapText = o.ReadGap == 0 ? "off" : $"{gapInEffect >> 10} KiB{(o.ReadGap < 0 ? " (the default: half the ring)" : "")}";
        string bulkText = bulk > 0 ? $"{bulk * o.Rounds / (double)(1 << 20):0.##} MiB bulk per side ({o.Rounds} rounds x {bulk / (double)(1 << 20):0.##} MiB, after {BulkWarmup(bulk) / (double)(1 << 20):0.##} MiB warm-up)" : "no bulk";
        Console.WriteLine($"channel benchmark ({variant}): transport {transport}, events {o.Events}, {o.Loops} device loop(s), {o.RegionMiB} MiB {o.Memory} region (rings of {ringSize >> 10} KiB), read gap {gapText}, {bulkText}, "
            + $"{trips * o.Rounds} round trips of {Message} bytes per phase ({o.Rounds} rounds x {trips}, polling x10, each after {Warmup} warm-up), {o.Rounds} alternating rounds (rounds 1, 3, ... in list order, TCP first; rounds 2, 4, ... reversed); "
            + $"{Environment.ProcessorCount} CPUs; server on CPU 0, client on CPU 1; load average before: {File.ReadAllText("/proc/loadavg").Trim()}");
        // What the two cores can move between them right now with no vism in it: a slow phase of
        // this VM (cross-core copies at a third of memcpy) holds the channel back as much.
        if (bulk > 0)
            Console.WriteLine($"  cross-core probe before (2 s, CPUs 0 -> 1): {CrossCore.Probe(TimeSpan.FromSeconds(2), 4, 0, 1)}");
        string gap = o.ReadGap.ToString(CultureInfo.InvariantCulture);
        using Process server = StartPeer(0, ["server", transport, host.Endpoints[0], host.DevIds[1].ToString(CultureInfo.InvariantCulture), variant, o.Events, gap]);
        string? hello = await server.StandardOutput.ReadLineAsync();
        if (hello is null || !hello.StartsWith("listen ", StringComparison.Ordinal))
            throw new InvalidOperationException($"the server peer said '{hello}': {await server.StandardError.ReadToEndAsync()}");
        string[] parts = hello.Split(' ');
        using Process client = StartPeer(1, ["client", transport, host.Endpoints[1], parts[1], parts[2],
            bulk.ToString(CultureInfo.InvariantCulture), trips.ToString(CultureInfo.InvariantCulture), variant, o.Events, o.Rounds.ToString(CultureInfo.InvariantCulture), gap]);
        Task<string> serverErrors = server.StandardError.ReadToEndAsync();
        Task<string> clientErrors = client.StandardError.ReadToEndAsync();
        while (await client.StandardOutput.ReadLineAsync() is { } line)
            Console.WriteLine(line);
        await Task.WhenAll(client.WaitForExitAsync(), server.WaitForExitAsync()).WaitAsync(TimeSpan.FromMinutes(10));
        if (bulk > 0)
            Console.WriteLine($"  cross-core probe after (2 s, CPUs 0 -> 1): {CrossCore.Probe(TimeSpan.FromSeconds(2), 4, 0, 1)}");
        Console.WriteLine($"load average after: {File.ReadAllText("/proc/loadavg").Trim()}");
        if (client.ExitCode != 0 || server.ExitCode != 0)
        {
            Console.Error.WriteLine($"client exit {client.ExitCode}: {await clientErrors}\nserver exit {server.ExitCode}: {await serverErrors}");
            return 1;
        }
        return 0;
    }

    private static Process StartPeer(int cpu, string[] args)
    {
        var psi = new ProcessStartInfo("taskset") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(cpu.ToString(CultureInfo.InvariantCulture));
        string self = Environment.ProcessPath ?? "dotnet";
        psi.ArgumentList.Add(self);
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            psi.ArgumentList.Add(typeof(ChannelBenchmark).Assembly.Location);
        psi.ArgumentList.Add("channel-peer");
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        return Process.Start(psi) ?? throw new InvalidOperationException("cannot start a peer");
    }

    private const string Full = "defaults", NoSpin = "no-spin", NoSpinBusyPoll = "no-spin-busy-poll";

    /// <summary>Whether the peers' waits sleep at once (both no-spin variants).</summary>
    private static bool Sleeps(string variant) => variant is NoSpin or NoSpinBusyPoll;

    /// <summary>One request/response phase: TCP (blocking or spun-on non-blocking socket) or the
    /// channel (wait mode, spin before announcing a wait), over <c>trips x Scale</c> round trips per
    /// round; <paramref name="Label"/> names it in the per-round lines.</summary>
    private sealed record Phase(string Label, bool Tcp, bool Poll, TimeSpan? Spin = null, int Scale = 1);

    /// <summary>The phases of one round, in list order (both peers run the same list; odd rounds
    /// reversed, <see cref="InRoundOrder{T}"/>). A channel phase compares with the TCP phase of the
    /// same kind (blocking or polling) in the same round.</summary>
    private static Phase[] Phases(string variant) => Sleeps(variant)
        ? [new("TCP blocking", Tcp: true, Poll: false), new("no spin", Tcp: false, Poll: false, Spin: TimeSpan.Zero)]
        : [new("TCP blocking", Tcp: true, Poll: false), new("defaults", Tcp: false, Poll: false), new("SpinTime 0", Tcp: false, Poll: false, Spin: TimeSpan.Zero),
            new("TCP polling", Tcp: true, Poll: true, Scale: 10), new("polling", Tcp: false, Poll: true, Scale: 10)];

    /// <summary>The sides of a throughput round in list order: TCP (null), the channel event-driven, polling.</summary>
    private static readonly ChannelWaitMode?[] BulkSides = [null, ChannelWaitMode.Event, ChannelWaitMode.Poll];

    /// <summary>Bytes of the unmeasured throughput pass each side makes before round 1: a round's
    /// bytes, at most 16 MiB (four times through the ring: its pages faulted in, the copy loops
    /// compiled, TCP's buffers grown).</summary>
    private static long BulkWarmup(long bulkPerRound) => Math.Min(bulkPerRound, 16 << 20);

    /// <summary>Round <paramref name="round"/>'s order (from 0; -1 is the throughput warm-up): the list
    /// in even rounds, reversed in odd ones, so that neither TCP nor the channel always runs first and
    /// a steady drift of the machine's speed across a pair of rounds favours neither side. Both peers
    /// follow it.</summary>
    private static IEnumerable<T> InRoundOrder<T>(T[] items, int round) => round % 2 == 0 || round < 0 ? items : Enumerable.Reverse(items);

    /// <summary>A peer process: <c>channel-peer server KIND SOCKET PEER-DEVID VARIANT EVENTS</c> or
    /// <c>channel-peer client KIND SOCKET TOKEN PORT BULK-BYTES-PER-ROUND TRIPS-PER-ROUND VARIANT EVENTS ROUNDS</c>.
    /// The client tells the server the rounds, bytes and round trips per round over the TCP socket.</summary>
    public static int Peer(string[] args) => args[0] == "server" ? Server(args).GetAwaiter().GetResult() : Client(args).GetAwaiter().GetResult();

    /// <summary>The device with the default channel options: bulk transfers run as a user gets them
    /// (event mode, 20 us spin); the no-spin variant's driver sleeps at once on the update event.</summary>
    private static ChannelDevice Open(string kind, string socket, string variant, string events, string readGap)
    {
        long gap = long.Parse(readGap, CultureInfo.InvariantCulture);
        return ChannelDevice.Open(kind, socket, gap < 0 ? null : new ChannelOptions { ReadGap = gap }, vectors: events == "irq" ? 1 : 0,
            clientOptions: Sleeps(variant) ? new IsmClientOptions { SpinBeforeBlock = TimeSpan.Zero } : null);
    }

    private static async Task<int> Server(string[] args)
    {
        using ChannelDevice device = Open(args[1], args[2], args[4], args[5], args[6]);
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        using ChannelListener offer = await device.ListenAsync(ulong.Parse(args[3], CultureInfo.InvariantCulture));
        Console.WriteLine($"listen 0x{offer.Token:x} {((IPEndPoint)listener.LocalEndpoint).Port}");
        Console.Out.Flush();
        // Synchronous accept and connect: a socket once used asynchronously is non-blocking inside
        // .NET, and its "blocking" receives then wait through the socket engine thread (an extra
        // wake-up per message that a TCP user who blocks does not pay). For the same reason the
        // polling round trips have a connection of their own: a socket once set non-blocking stays
        // so underneath (Blocking = true afterwards is emulated through that thread), which made
        // every blocking round after the first polling phase 2x slower.
        using Socket tcp = listener.AcceptSocket();
        tcp.NoDelay = true;
        using Socket tcpPoll = listener.AcceptSocket(); // the client connects it second
        tcpPoll.NoDelay = true;
        tcpPoll.Blocking = false;
        using IsmChannel channel = await offer.AcceptAsync();
        var buffer = new byte[Chunk];
        // The same phases as the client, in the same order.
        int rounds = (int)ReadLong(tcp);
        long bulk = ReadLong(tcp);
        int trips = (int)ReadLong(tcp);
        if (rounds < 1 || bulk < 0 || trips < 1)
            throw new InvalidOperationException($"the client sent {rounds} rounds, {bulk} bytes, {trips} round trips");
        // Round -1 is the unmeasured warm-up.
        for (int round = -1; bulk > 0 && round < rounds; round++)
            foreach (ChannelWaitMode? mode in InRoundOrder(BulkSides, round))
            {
                long bytes = round < 0 ? BulkWarmup(bulk) : bulk;
                if (mode is not { } wait)
                {
                    for (long got = 0; got < bytes;)
                        got += tcp.Receive(buffer);
                    tcp.Send(buffer.AsSpan(0, 1));
                    continue;
                }
                channel.WaitMode = wait;
                for (long got = 0; got < bytes;)
                    got += channel.ReadSome(buffer);
                channel.WriteAll(buffer.AsSpan(0, 1));
            }
        TimeSpan defaultSpin = channel.SpinTime;
        for (int round = 0; round < rounds; round++)
            foreach (Phase phase in InRoundOrder(Phases(args[4]), round))
            {
                if (phase.Tcp)
                {
                    EchoTcp(phase.Poll ? tcpPoll : tcp, buffer, trips * phase.Scale);
                    continue;
                }
                channel.WaitMode = phase.Poll ? ChannelWaitMode.Poll : ChannelWaitMode.Event;
                channel.SpinTime = phase.Spin ?? defaultSpin;
                EchoChannel(channel, buffer, trips * phase.Scale);
            }
        channel.Close();
        return 0;
    }

    private static async Task<int> Client(string[] args)
    {
        string variant = args[7];
        using ChannelDevice device = Open(args[1], args[2], variant, args[8], args[10]);
        ulong token = ulong.Parse(args[3].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        using var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        tcp.Connect(IPAddress.Loopback, int.Parse(args[4], CultureInfo.InvariantCulture)); // synchronous: see Server
        using var tcpPoll = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        tcpPoll.Connect(IPAddress.Loopback, int.Parse(args[4], CultureInfo.InvariantCulture)); // after tcp: the server accepts in this order
        tcpPoll.Blocking = false;
        using IsmChannel channel = await device.ConnectAsync(token);
        long bulk = long.Parse(args[5], CultureInfo.InvariantCulture);
        int trips = int.Parse(args[6], CultureInfo.InvariantCulture);
        int rounds = int.Parse(args[9], CultureInfo.InvariantCulture);
        var buffer = new byte[Chunk];
        Random.Shared.NextBytes(buffer);
        WriteLong(tcp, rounds);
        WriteLong(tcp, bulk);
        WriteLong(tcp, trips);

        if (bulk > 0)
        {
            // MiB/s per round, by side (BulkSides' order).
            double[][] rates = [new double[rounds], new double[rounds], new double[rounds]];
            // Round -1 is the unmeasured warm-up.
            for (int round = -1; round < rounds; round++)
            {
                foreach (ChannelWaitMode? mode in InRoundOrder(BulkSides, round))
                {
                    long bytes = round < 0 ? BulkWarmup(bulk) : bulk;
                    channel.WaitMode = mode ?? channel.WaitMode;
                    double seconds = mode is null
                        ? Time(() =>
                        {
                            for (long sent = 0; sent < bytes; sent += Chunk)
                                tcp.Send(buffer);
                            tcp.Receive(buffer.AsSpan(0, 1));
                        })
                        : Time(() =>
                        {
                            for (long sent = 0; sent < bytes; sent += Chunk)
                                channel.WriteAll(buffer);
                            channel.ReadSome(buffer.AsSpan(0, 1));
                        });
                    if (round >= 0)
                        rates[Array.IndexOf(BulkSides, mode)][round] = bytes / seconds / (1 << 20);
                }
                if (round < 0)
                    continue;
                double t = rates[0][round];
                Console.WriteLine($"  throughput round {round + 1}/{rounds}{(round % 2 == 0 ? "" : " (reversed)")}: TCP {t:F0} MiB/s, channel event-driven {rates[1][round]:F0} MiB/s x{Times(rates[1][round] / t)}, polling {rates[2][round]:F0} MiB/s x{Times(rates[2][round] / t)}");
            }
            for (int side = 1; side < BulkSides.Length; side++)
            {
                double[] ratios = rates[side].Zip(rates[0], (c, t) => c / t).ToArray();
                Console.WriteLine($"| throughput, {Chunk >> 10} KiB writes, channel {(BulkSides[side] == ChannelWaitMode.Event ? "event-driven (20 us spin)" : "polling")} | TCP loopback {Median(rates[0]):F0} MiB/s | channel {Median(rates[side]):F0} MiB/s | channel/TCP x{Times(Median(ratios))} ({RangeOf(ratios, Times)}) |");
            }
        }

        TimeSpan defaultSpin = channel.SpinTime;
        Phase[] phases = Phases(variant);
        // Round trips by phase (list order) and round, each sorted.
        double[][][] rtts = phases.Select(_ => new double[rounds][]).ToArray();
        for (int round = 0; round < rounds; round++)
        {
            foreach (Phase phase in InRoundOrder(phases, round))
            {
                double[] rtt;
                if (phase.Tcp)
                    rtt = PingTcp(phase.Poll ? tcpPoll : tcp, buffer, trips * phase.Scale);
                else
                {
                    channel.WaitMode = phase.Poll ? ChannelWaitMode.Poll : ChannelWaitMode.Event;
                    channel.SpinTime = phase.Spin ?? defaultSpin;
                    rtt = PingChannel(channel, buffer, trips * phase.Scale);
                }
                rtts[Array.IndexOf(phases, phase)][round] = rtt;
            }
            var line = new List<string>();
            for (int i = 0; i < phases.Length; i++)
            {
                double m = Percentile(rtts[i][round], 50);
                line.Add(phases[i].Tcp ? $"{phases[i].Label} {m:F2} us" : $"{phases[i].Label} {m:F2} us x{m / Percentile(rtts[TcpOf(phases, i)][round], 50):F3}");
            }
            Console.WriteLine($"  64 B round {round + 1}/{rounds}{(round % 2 == 0 ? "" : " (reversed)")}: {string.Join(", ", line)}");
        }
        for (int i = 0; i < phases.Length; i++)
        {
            Phase phase = phases[i];
            if (phase.Tcp)
                continue;
            string what = phase.Poll ? "64 B request/response, polling"
                : variant == NoSpin ? "64 B request/response, event-driven, no spin (SpinTime 0, SpinBeforeBlock 0: every wait sleeps)"
                : variant == NoSpinBusyPoll ? "64 B request/response, event-driven, no spin in the peers, vism's loop busy-polls 200 us"
                : phase.Spin == TimeSpan.Zero ? "64 B request/response, event-driven, SpinTime 0 (every wait announced: notify -> event, 50 us event spin)"
                : $"64 B request/response, event-driven, defaults (SpinTime {defaultSpin.TotalMicroseconds:F0} us, then the event)";
            Report(what, rtts[TcpOf(phases, i)], rtts[i]);
        }
        return 0;
    }

    /// <summary>The TCP phase that channel phase <paramref name="i"/> compares with: the same kind (blocking or polling).</summary>
    private static int TcpOf(Phase[] phases, int i) => Array.FindIndex(phases, p => p.Tcp && p.Poll == phases[i].Poll);

    /// <summary>A summary row: pooled median and p99 of all rounds' round trips of each side, and the
    /// median and range of the per-round ratios of the medians.</summary>
    private static void Report(string what, double[][] tcpRounds, double[][] channelRounds)
    {
        double[] ratios = channelRounds.Zip(tcpRounds, (c, t) => Percentile(c, 50) / Percentile(t, 50)).ToArray();
        double[] tcp = Pool(tcpRounds), channel = Pool(channelRounds);
        Console.WriteLine($"| {what} | TCP loopback median {Percentile(tcp, 50):F2} us, p99 {Percentile(tcp, 99):F2} us | channel median {Percentile(channel, 50):F2} us, p99 {Percentile(channel, 99):F2} us | channel/TCP x{Median(ratios):F3} ({RangeOf(ratios, r => r.ToString("F3", CultureInfo.InvariantCulture))}) |");
    }

    private static double[] Pool(double[][] rounds)
    {
        double[] all = rounds.SelectMany(r => r).ToArray();
        Array.Sort(all);
        return all;
    }

    /// <summary>The median of per-round figures (the mean of the middle two for an even count).</summary>
    private static double Median(double[] values) => Vism.Benchmarks.Stats.Median(values);

    /// <summary>"median of N rounds, xMIN-xMAX" for a ratio cell.</summary>
    private static string RangeOf(double[] ratios, Func<double, string> format) =>
        $"median of {ratios.Length} rounds, x{format(ratios.Min())}-x{format(ratios.Max())}";

    /// <summary>A throughput ratio: one decimal as before, two below 1 (a starved round shows as x0.04, not x0.0).</summary>
    private static string Times(double ratio) => ratio.ToString(ratio < 1 ? "F2" : "F1", CultureInfo.InvariantCulture);

    private static double Percentile(double[] sorted, int p) => sorted[Math.Min(sorted.Length - 1, sorted.Length * p / 100)];

    private static double Time(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    /// <summary>Round trips over <paramref name="tcp"/>: blocking, or spun on when it is non-blocking.</summary>
    private static double[] PingTcp(Socket tcp, byte[] buffer, int trips)
    {
        var rtt = new double[trips];
        for (int i = -Warmup; i < trips; i++) // warm-up round trips first
        {
            long start = Stopwatch.GetTimestamp();
            tcp.Send(buffer.AsSpan(0, Message));
            ReceiveExactly(tcp, buffer.AsSpan(0, Message));
            if (i >= 0) rtt[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(rtt);
        return rtt;
    }

    private static void EchoTcp(Socket tcp, byte[] buffer, int trips)
    {
        for (int i = -Warmup; i < trips; i++)
        {
            ReceiveExactly(tcp, buffer.AsSpan(0, Message));
            tcp.Send(buffer.AsSpan(0, Message));
        }
    }

    /// <summary>Reads exactly <paramref name="into"/>.Length bytes; on a non-blocking socket it spins.</summary>
    private static void ReceiveExactly(Socket tcp, Span<byte> into)
    {
        for (int got = 0; got < into.Length;)
        {
            int n = tcp.Receive(into[got..], SocketFlags.None, out SocketError error);
            if (error == SocketError.WouldBlock) continue;
            if (error != SocketError.Success || n == 0) throw new SocketException((int)error);
            got += n;
        }
    }

    private static double[] PingChannel(IsmChannel channel, byte[] buffer, int trips)
    {
        var rtt = new double[trips];
        for (int i = -Warmup; i < trips; i++)
        {
            long start = Stopwatch.GetTimestamp();
            channel.Send(buffer.AsSpan(0, Message));
            if (channel.Receive(buffer) != Message) throw new InvalidOperationException("short reply");
            if (i >= 0) rtt[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(rtt);
        return rtt;
    }

    private static void EchoChannel(IsmChannel channel, byte[] buffer, int trips)
    {
        for (int i = -Warmup; i < trips; i++)
        {
            int n = channel.Receive(buffer);
            channel.Send(buffer.AsSpan(0, n));
        }
    }

    private static void WriteLong(Socket tcp, long value)
    {
        Span<byte> b = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(b, value);
        tcp.Send(b);
    }

    private static long ReadLong(Socket tcp)
    {
        Span<byte> b = stackalloc byte[8];
        ReceiveExactly(tcp, b);
        return System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(b);
    }
}
