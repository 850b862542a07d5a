using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Microsoft.Extensions.Logging.Abstractions;
using Perfolizer.Mathematics.OutlierDetection;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;
using Vism.Events.Irq;
using Vism.Events.Vq;
using Vism.Native;
using Vism.Transport.Mmio;
using Vism.Transport.VhostUser;

namespace Vism.Benchmarks;

/// <summary>
/// Notify -> event latency: one operation is a driver writing a region's notify slot on device A
/// and a second driver receiving the update on device B (an eventq record with Events.Vq, a vector
/// firing with Events.Irq), per transport. <c>eventfd</c> is the floor measured in the same run: a
/// raw eventfd round trip between two threads (signal, a thread polling it wakes and signals back).
/// Each iteration is one operation, so Median and P99 are the latency distribution itself.
/// Command: see docs/benchmarks.md ("Events").
/// </summary>
[Config(typeof(LatencyConfig))]
public class EventBenchmarks
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private string _dir = null!;
    private readonly List<IDisposable> _cleanup = [];
    private readonly List<Func<Task>> _stops = [];
    private EventLoop[] _loops = [];
    private IsmHost? _host;
    private IsmClient _writer = null!;
    private IsmClient _reader = null!;
    private ulong _writerOffset;
    private ulong _readerOffset;
    private EventFd _ping = null!;
    private EventFd _pong = null!;
    private Thread? _echo;
    private volatile bool _stopping;

    /// <summary><c>eventfd</c>, or <c>transport/events</c>.</summary>
    [Params("eventfd", "in-memory/vq", "in-memory/irq", "mmio/vq", "mmio/irq", "vhost-user/vq", "vhost-user/irq")]
    public string Path { get; set; } = "";

    private bool Vq => Path.EndsWith("/vq", StringComparison.Ordinal);

    [GlobalSetup]
    public void Setup()
    {
        if (Path == "eventfd")
        {
            SetupEventFd();
            return;
        }
        _dir = System.IO.Path.Combine("/tmp", $"vism-bench-ev-{Environment.ProcessId}");
        Directory.CreateDirectory(_dir);
        _loops = [new EventLoop("bench-ev-a"), new EventLoop("bench-ev-b")];
        _host = new IsmHost(new IsmHostOptions { Gid = 1 }, NullLoggerFactory.Instance);
        string transport = Path[..Path.IndexOf('/')];
        _writer = Serve("a", _loops[0], transport, vq: true);
        _reader = Serve("b", _loops[1], transport, Vq);
        AllocReply region = _writer.Alloc(4096);
        _writerOffset = region.Offset;
        _readerOffset = _reader.Attach(region.Token).Offset;
        if (!Vq && _reader.EventVector(_readerOffset, 0) != IsmControl.AckOk)
            throw new InvalidOperationException("EVENT_VECTOR failed");
    }

    /// <summary>One notify -> event, or one eventfd round trip.</summary>
    [Benchmark]
    public void NotifyToEvent()
    {
        if (Path == "eventfd")
        {
            _ping.Signal();
            if (_pong.Wait(Wait) == 0)
                throw new TimeoutException("the echo thread did not answer");
            return;
        }
        _writer.Notify(_writerOffset);
        bool got = Vq ? _reader.WaitEvent(Wait) is [var at] && at == _readerOffset : _reader.WaitVector(0, Wait);
        if (!got)
            throw new InvalidOperationException($"{Path}: no event for the notify");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (Path == "eventfd")
        {
            _stopping = true;
            _ping.Signal();
            _echo?.Join();
            _ping.Dispose();
            _pong.Dispose();
            return;
        }
        _reader.Dispose();
        _writer.Dispose();
        foreach (Func<Task> stop in _stops)
            stop().GetAwaiter().GetResult();
        _host?.Dispose();
        foreach (IDisposable d in _cleanup)
            d.Dispose();
        foreach (EventLoop l in _loops)
            l.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private void SetupEventFd()
    {
        _ping = EventFd.Create();
        _pong = EventFd.Create();
        _echo = new Thread(() =>
        {
            while (!_stopping)
            {
                if (_ping.Wait(TimeSpan.FromSeconds(1)) != 0 && !_stopping)
                    _pong.Signal();
            }
        }) { IsBackground = true, Name = "bench-echo" };
        _echo.Start();
    }

    /// <summary>A device on <paramref name="loop"/> with the chosen events plugin, served by
    /// <paramref name="transport"/>, and an ISM client driving it.</summary>
    private IsmClient Serve(string name, EventLoop loop, string transport, bool vq)
    {
        DeviceDescription d = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
        IEventChannel events = vq
            ? new VqEventChannel(new VqEventOptions(), d, loop, NullLogger<VqEventChannel>.Instance)
            : new IrqEventChannel(new IrqEventOptions(), d, loop, NullLogger<IrqEventChannel>.Instance);
        var memory = new InMemoryBackend(64 << 20);
        _cleanup.Add(memory);
        var counters = new DeviceCounters();
        IsmDevice device = _host!.AddDevice(d, loop, memory, events, counters);
        var host = new HostDescription { Gid = 1, StateDirectory = _dir, SocketDirectory = _dir };
        IDriverTransport driver;
        switch (transport)
        {
            case "in-memory":
                driver = InMemoryTransport.StartFor(device, vectorCount: 1);
                break;
            case "mmio":
            {
                var t = new MmioTransport(new MmioOptions { Vectors = 1 }, d, host, loop, counters, NullLogger<MmioTransport>.Instance);
                loop.InvokeAsync(() => t.Start(device)).GetAwaiter().GetResult();
                _stops.Add(() => loop.InvokeAsync(async () => { await t.DisposeAsync(); return true; }));
                driver = MmioVmmClient.Connect(t.Endpoint);
                break;
            }
            case "vhost-user":
            {
                var t = new VhostUserTransport(new VhostUserOptions { Vectors = 1 }, d, host, loop, counters, NullLogger<VhostUserTransport>.Instance);
                loop.InvokeAsync(() => t.Start(device)).GetAwaiter().GetResult();
                _stops.Add(() => loop.InvokeAsync(async () => { await t.DisposeAsync(); return true; }));
                var ram = new GuestRam();
                _cleanup.Add(ram);
                driver = VhostUserFrontend.Connect(t.Endpoint, ram, new VhostUserFrontendOptions { VectorCount = 1 });
                break;
            }
            default:
                throw new ArgumentException($"unknown transport {transport}");
        }
        return IsmClient.Start(driver);
    }

    /// <summary>One operation per iteration, many iterations, no outlier removal: the measurements
    /// are the latency distribution. Columns: median and 99th percentile.</summary>
    private sealed class LatencyConfig : ManualConfig
    {
        public LatencyConfig()
        {
            AddJob(Job.Default
                .WithStrategy(RunStrategy.Monitoring)
                .WithLaunchCount(1)
                .WithWarmupCount(50)
                .WithIterationCount(2000)
                .WithInvocationCount(1)
                .WithUnrollFactor(1)
                .WithOutlierMode(OutlierMode.DontRemove));
            AddColumn(StatisticColumn.Median, new PercentileColumn(99), StatisticColumn.Max);
            HideColumns(Column.Error, Column.StdDev);
        }
    }

    /// <summary>The given percentile of an operation's measurements.</summary>
    private sealed class PercentileColumn(int percentile) : IColumn
    {
        public string Id => $"{nameof(PercentileColumn)}.P{percentile}";
        public string ColumnName => $"P{percentile}";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Statistics;
        public int PriorityInCategory => 100;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Time;
        public string Legend => $"{percentile}th percentile of all measurements";

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, summary.Style);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            BenchmarkDotNet.Mathematics.Statistics? s = summary[benchmarkCase]?.ResultStatistics;
            return s is null ? "NA" : $"{s.Percentiles.Percentile(percentile) / 1000:N1} μs";
        }

        public bool IsAvailable(Summary summary) => true;

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    }
}
