using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Events.Irq;
using Vism.Native;
using Vism.Transport.VhostUser;

namespace Vism.Benchmarks;

/// <summary>
/// What idle vhost-user devices cost their loop: N devices on one loop, each started by vism's own
/// frontend with one region allocated (so its NOTIFY window has a slot in use and the poller runs),
/// then left alone. After the pollers have slowed down to <c>notify-poll-slow</c>, the loop thread's
/// own CPU time (getrusage RUSAGE_THREAD, microsecond resolution) is read before and after a quiet
/// period. The same is measured with one of the devices notified every millisecond (the poller's
/// cost while active), and with the regions freed (no slot in use: the pollers stop) as the floor. Not a BenchmarkDotNet benchmark: it measures a rate over seconds, not an operation.
/// Command: <c>dotnet run -c Release --project benchmarks/Vism.Benchmarks -- idle-cost [seconds] [device counts...]</c>
/// (default 10 s, 1 and 100 devices); see docs/benchmarks.md.
/// </summary>
public static class IdleCost
{
    public static int Run(string[] args)
    {
        int active = 1;
        bool doorbell = false;
        var positional = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--active") active = int.Parse(args[++i]);
            else if (args[i] == "--doorbell") doorbell = true;
            else positional.Add(args[i]);
        }
        int seconds = positional.Count > 0 ? int.Parse(positional[0]) : 10;
        int[] counts = positional.Count > 1 ? positional.Skip(1).Select(int.Parse).ToArray() : [1, 100];
        var defaults = new VhostUserOptions();
        Console.WriteLine($"idle-cost: notify-poll-fast {defaults.NotifyPollFast.TotalMicroseconds} us, notify-poll-slow {defaults.NotifyPollSlow.TotalMilliseconds} ms, {seconds} s per measurement, "
            + $"{active} device(s) notified every ms while active, notifies {(doorbell ? "ring the doorbell (vism's frontend default)" : "are plain stores (a QEMU guest: polled only)")}, {Environment.ProcessorCount} CPUs, load average {File.ReadAllText("/proc/loadavg").Trim()}");
        foreach (int n in counts)
            Measure(n, TimeSpan.FromSeconds(seconds), Math.Min(active, n), doorbell);
        return 0;
    }

    private static void Measure(int devices, TimeSpan period, int activeDevices, bool doorbell)
    {
        string dir = Path.Combine("/tmp", $"vism-idle-{Environment.ProcessId}-{devices}");
        Directory.CreateDirectory(dir);
        Fd.RaiseOpenFileLimit();
        using var loop = new EventLoop("idle-cost");
        using var frontendLoop = new EventLoop("idle-cost-frontends");
        using var host = new IsmHost(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        var transports = new List<VhostUserTransport>();
        var clients = new List<(IsmClient Client, GuestRam Ram, ulong Region)>();
        try
        {
            for (int i = 0; i < devices; i++)
            {
                DeviceDescription d = DeviceLayout.Compute($"idle{i}", Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
                var events = new IrqEventChannel(new IrqEventOptions(), d, loop, NullLogger<IrqEventChannel>.Instance);
                IsmDevice device = host.AddDevice(d, loop, new InMemoryBackend(64 << 20), events, new DeviceCounters());
                var description = new HostDescription { Gid = 1, StateDirectory = dir, SocketDirectory = dir };
                var transport = new VhostUserTransport(new VhostUserOptions { Vectors = 1 }, d, description, loop, new DeviceCounters(),
                    NullLogger<VhostUserTransport>.Instance);
                loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
                transports.Add(transport);
                var ram = new GuestRam(1 << 20);
                IsmClient client = IsmClient.Start(VhostUserFrontend.Connect(transport.Endpoint, ram,
                    new VhostUserFrontendOptions { VectorCount = 1, NotifyDoorbell = doorbell }, frontendLoop), new IsmClientOptions { EventBuffers = 2 });
                AllocReply region = client.Alloc(4096);
                if (!region.Ok) throw new InvalidOperationException($"ALLOC on device {i} failed");
                clients.Add((client, ram, region.Offset));
            }
            int polling = loop.InvokeAsync(() => transports.Count(t => t.Session?.Poller is { Armed: true })).GetAwaiter().GetResult();
            // The pollers slow down from the fast interval to the slow one within ~2 slow intervals.
            Thread.Sleep(TimeSpan.FromSeconds(1));
            (double withRegions, long scans, long wakeUps) = LoopCpu(loop, transports, period);

            // activeDevices devices notified every millisecond (each its own slot: nothing is routed, so
            // this is the pollers' cost while active), the others idle.
            using var stop = new CancellationTokenSource();
            var writer = new Thread(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    for (int k = 0; k < activeDevices; k++)
                        clients[k].Client.Notify(clients[k].Region);
                    Thread.Sleep(1);
                }
            }) { Name = "idle-cost-writer" };
            writer.Start();
            Thread.Sleep(TimeSpan.FromMilliseconds(200));
            (double active, long activeScans, long activeWakeUps) = LoopCpu(loop, transports, period);
            stop.Cancel();
            writer.Join();

            foreach ((IsmClient client, _, ulong region) in clients)
                if (client.Detach(region) != IsmControl.AckOk) throw new InvalidOperationException("DETACH failed");
            Thread.Sleep(TimeSpan.FromSeconds(1));
            (double withoutRegions, long idleScans, _) = LoopCpu(loop, transports, period);

            Console.WriteLine($"{devices,5} devices, {polling} polling: loop thread {withRegions:F4} % of a core with a region each, idle ({scans / period.TotalSeconds:F0} scans/s, "
                + $"{wakeUps / period.TotalSeconds:F0} scanner timers/s; {withRegions / devices:F4} % per device); {active:F4} % with {activeDevices} of them notified every ms "
                + $"({activeScans / period.TotalSeconds:F0} scans/s, {activeWakeUps / period.TotalSeconds:F0} scanner timers/s); "
                + $"{withoutRegions:F4} % with no region ({idleScans} scans)");
        }
        finally
        {
            foreach ((IsmClient client, GuestRam ram, _) in clients)
            {
                client.Dispose();
                ram.Dispose();
            }
            foreach (VhostUserTransport t in transports)
                loop.InvokeAsync(async () => { await t.DisposeAsync(); return true; }).GetAwaiter().GetResult();
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The loop thread's CPU time over <paramref name="period"/>, as % of one core, the
    /// NOTIFY scans done meanwhile and the timers the loop's NOTIFY scanner scheduled (its wake-ups).</summary>
    private static (double Percent, long Scans, long WakeUps) LoopCpu(EventLoop loop, List<VhostUserTransport> transports, TimeSpan period)
    {
        (long cpu0, long scans0, long timers0) = loop.InvokeAsync(() => (ThreadCpuMicroseconds(), Scans(transports), NotifyScanner.For(loop).TimersScheduled)).GetAwaiter().GetResult();
        Thread.Sleep(period);
        (long cpu1, long scans1, long timers1) = loop.InvokeAsync(() => (ThreadCpuMicroseconds(), Scans(transports), NotifyScanner.For(loop).TimersScheduled)).GetAwaiter().GetResult();
        return (100.0 * (cpu1 - cpu0) / period.TotalMicroseconds, scans1 - scans0, timers1 - timers0);
    }

    private static long Scans(List<VhostUserTransport> transports) => transports.Sum(t => t.Session?.Poller?.Scans ?? 0);

    private static long ThreadCpuMicroseconds() => CpuTime.ThreadMicroseconds();
}
