using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>
/// Builds real plugin folders for tests: C# source compiled with Roslyn into
/// <c>&lt;root&gt;/&lt;Name&gt;/&lt;Name&gt;.dll</c>, exactly the layout the host discovers.
/// Used for plugins that must be broken in a precise way, and for the small "kit" plugin that
/// provides a transport and an events kind until the in-repo plugins are present.
/// </summary>
public static class TestPlugins
{
    private static readonly Lazy<MetadataReference[]> Framework = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
        .Where(p => p.EndsWith(".dll", StringComparison.Ordinal))
        .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p)).ToArray());

    /// <summary>Compiles <paramref name="source"/> into <c>dir/name/name.dll</c> (or just <c>dir/name.dll</c> when
    /// <paramref name="ownFolder"/> is false) and returns the dll path.</summary>
    public static string Compile(string dir, string name, string source, IEnumerable<string>? references = null, bool ownFolder = true)
    {
        string outDir = ownFolder ? Path.Combine(dir, name) : dir;
        Directory.CreateDirectory(outDir);
        var compilation = CSharpCompilation.Create(name,
            [CSharpSyntaxTree.ParseText(source, new CSharpParseOptions(LanguageVersion.Latest))],
            Framework.Value.Concat((references ?? []).Select(r => MetadataReference.CreateFromFile(r))),
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));
        string path = Path.Combine(outDir, name + ".dll");
        using (FileStream fs = File.Create(path))
        {
            var result = compilation.Emit(fs);
            if (!result.Success)
                throw new InvalidOperationException($"test plugin {name} does not compile:\n" +
                    string.Join("\n", result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)));
        }
        return path;
    }

    private static string Metadata(string key) =>
        typeof(TestPlugins).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;

    /// <summary>The in-repo plugins as the host's build deployed them (<c>&lt;host output&gt;/plugins</c>).</summary>
    public static string InRepoPluginsDir => Path.Combine(Metadata("VismHostOutput"), "plugins");

    /// <summary>The repository root (for config/).</summary>
    public static string Repository => Metadata("VismRepository");

    /// <summary>The published sample third-party plugin (built by the test project from tests/sample-plugin).</summary>
    public static string SamplePluginDir =>
        Path.Combine(AppContext.BaseDirectory, "sample-plugins", "Vism.Sample.ShmMemory");

    /// <summary>Usings and the contract attribute every test plugin starts with.</summary>
    public const string Header = """
        using System;
        using System.ComponentModel;
        using Microsoft.Extensions.Logging;
        using Vism.Abstractions;
        """;

    /// <summary>A plugin providing transport <c>kit-transport</c> (claims its socket path as endpoint) and
    /// events <c>kit-events</c>; they validate options but serve nothing.</summary>
    public static readonly string KitSource = Header + """
        [assembly: VismPlugin(VismContract.Version)]
        namespace Kit;
        public sealed class KitPlugin : IVismPlugin
        {
            public void Register(IVismPluginBuilder b)
            {
                b.AddTransport<KitTransport, KitTransportOptions>("kit-transport", "test transport");
                b.AddEvents<KitEvents, KitEventsOptions>("kit-events", "test events");
            }
        }
        public enum Mode { Fast, VerySlow }
        public sealed class KitTransportOptions : IValidatableOptions
        {
            [Description("Unix socket path")] public string? SocketPath { get; set; }
            [Description("Queue size")] public int QueueSize { get; set; } = 256;
            [Description("A size")] public ulong Buffer { get; set; } = 2 << 20;
            [Description("A mode")] public Mode Mode { get; set; } = Mode.Fast;
            public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(5);
            public string[] Tags { get; set; } = [];
            public void Validate(OptionsValidationContext c)
            {
                string path = SocketPath ?? System.IO.Path.Combine(c.Host.SocketDirectory, c.Device.Name + ".sock");
                c.ClaimEndpoint("socket-path", path);
                if (QueueSize <= 0 || (QueueSize & (QueueSize - 1)) != 0) c.Error("queue-size", $"{QueueSize} is not a power of two");
                if (c.Device.RegionSize > Buffer * 1024) c.DeviceError("region-size", "larger than the kit allows");
            }
        }
        public sealed class KitTransport(KitTransportOptions o) : ITransport
        {
            public string Endpoint => o.SocketPath ?? "";
            public int VectorCount => 0;
            public void Start(IVirtioDevice device) { }
            public System.Threading.Tasks.ValueTask DisposeAsync() => default;
        }
        public sealed class KitEventsOptions { }
        """ + NoOpChannel("KitEvents");

    /// <summary>Source of an event channel that offers nothing and does nothing.</summary>
    public static string NoOpChannel(string className) => $$"""
        public sealed class {{className}} : IEventChannel
        {
            public ulong Features => 0;
            public int QueueCount => 0;
            public void Activate(IEventContext context) { }
            public void Deactivate() { }
            public void OnRegionUpdated(ulong offset) { }
            public void OnRegionDetached(ulong offset) { }
            public bool TryBindVector(ulong offset, ulong vector, out string? failure) { failure = null; return true; }
            public void OnQueueNotified(int queueIndex) { }
            public void Dispose() { }
        }
        """;
}

public static partial class TestPluginSources
{
    /// <summary>
    /// Transport <c>mem</c>: Core's in-process <c>InMemoryTransport</c> as a plugin, so a composed
    /// device can be driven by an <c>IsmClient</c> without sockets (the driver side is <c>Inner</c>).
    /// Events <c>mem-events</c>: a small but real eventq / per-region-vector channel.
    /// Both record what DI handed their constructors.
    /// </summary>
    public const string Mem = TestPlugins.Header + """
        using System.Buffers.Binary;
        using System.Collections.Generic;
        using Vism.Driver;
        [assembly: VismPlugin(VismContract.Version)]
        namespace Mem;
        public sealed class MemPlugin : IVismPlugin
        {
            public void Register(IVismPluginBuilder b)
            {
                b.AddTransport<MemTransport, MemTransportOptions>("mem", "in-process transport for tests");
                b.AddEvents<MemEvents, MemEventsOptions>("mem-events", "eventq or per-region vectors, for tests");
            }
        }
        public sealed class MemTransportOptions
        {
            [Description("label")] public string Label { get; set; } = "none";
            public int Vectors { get; set; } = 4;
        }
        public sealed class MemTransport : ITransport
        {
            public MemTransport(MemTransportOptions options, DeviceDescription description, HostDescription host, IDeviceLoop loop,
                IDeviceCounters counters, ILogger<MemTransport> log, ILoggerFactory logs)
            {
                Options = options; Description = description; Host = host; Loop = loop; Counters = counters;
                CreatedOnLoop = loop.IsOnLoop;
                LoggerOk = log is not null && logs is not null;
                Inner = new InMemoryTransport(4 << 20, options.Vectors);
            }
            public MemTransportOptions Options { get; }
            public DeviceDescription Description { get; }
            public HostDescription Host { get; }
            public IDeviceLoop Loop { get; }
            public IDeviceCounters Counters { get; }
            public bool CreatedOnLoop { get; }
            public bool LoggerOk { get; }
            public bool Started { get; private set; }
            public bool Disposed { get; private set; }
            public InMemoryTransport Inner { get; }
            public IDriverTransport Driver => Inner;
            public string Endpoint => "mem:" + Description.Name + ":" + Options.Label;
            public int VectorCount => Inner.VectorCount;
            public void Start(IVirtioDevice device) { Inner.Start(device); Started = true; }
            public System.Threading.Tasks.ValueTask DisposeAsync() { Disposed = true; return Inner.DisposeAsync(); }
        }
        // The driver side of "mem", found by the host in this assembly (a third-party transport's connector).
        public sealed class MemConnector : IDriverConnector
        {
            public string TransportKind => "mem";
            public IDriverTransport Connect(DriverTarget target) => ((MemTransport)target.Transport!).Driver;
        }
        public enum EventMode { Vq, Irq }
        public sealed class MemEventsOptions { public EventMode Mode { get; set; } = EventMode.Vq; }
        public sealed class MemEvents(MemEventsOptions options) : IEventChannel
        {
            private readonly Queue<ulong> _pending = new();
            private readonly Dictionary<ulong, ulong> _vectors = new();
            private IEventContext? _context;
            public bool Disposed { get; private set; }
            public ulong Features => options.Mode == EventMode.Vq ? 1UL << Vism.Abstractions.Features.IsmEventVq : 1UL << Vism.Abstractions.Features.IsmEventIrq;
            public int QueueCount => options.Mode == EventMode.Vq ? 1 : 0;
            public void Activate(IEventContext context) => _context = context;
            public void Deactivate() { _context = null; _pending.Clear(); _vectors.Clear(); }
            public void OnRegionUpdated(ulong offset)
            {
                if (_context is null) return;
                if (options.Mode == EventMode.Irq)
                {
                    if (_vectors.TryGetValue(offset, out ulong v)) _context.SignalVector((int)v);
                    return;
                }
                _pending.Enqueue(offset);
                Flush();
            }
            public void OnRegionDetached(ulong offset) => _vectors.Remove(offset);
            public bool TryBindVector(ulong offset, ulong vector, out string? failure)
            {
                failure = _context is null || vector >= (ulong)_context.VectorCount ? "no such vector" : null;
                if (failure is null) _vectors[offset] = vector;
                return failure is null;
            }
            public void OnQueueNotified(int queueIndex) => Flush();
            private void Flush()
            {
                IVirtqueue? q = _context?.GetQueue(Virtio.EventQueue);
                if (q is null) return;
                byte[] record = new byte[16];
                while (_pending.Count > 0 && q.TryPop(out DescriptorChain? chain))
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(record, 1);
                    BinaryPrimitives.WriteUInt64LittleEndian(record.AsSpan(8), _pending.Dequeue());
                    int written = chain.Write(_context!.Memory, 0, record);
                    q.Complete(chain, written < 0 ? 0u : (uint)written);
                }
            }
            public void Dispose() => Disposed = true;
        }
        """;

    private const string NeedsDepRegistration = """b.AddTransport<NeedsDep, NoOptions>("needs-dep", "needs Faulty.Dep");""";

    /// <summary>Transports that fail on purpose: <c>throwing</c> (constructor), <c>failing-start</c>
    /// (Start), <c>needs-dep</c> (constructor needs an assembly that is not shipped).</summary>
    public static string Faulty(bool withDependency) => TestPlugins.Header + $$"""
        [assembly: VismPlugin(VismContract.Version)]
        namespace Faulty;
        public sealed class FaultyPlugin : IVismPlugin
        {
            public void Register(IVismPluginBuilder b)
            {
                b.AddTransport<Throwing, NoOptions>("throwing", "throws in its constructor");
                b.AddTransport<FailingStart, NoOptions>("failing-start", "throws in Start");
                {{(withDependency ? NeedsDepRegistration : "")}}
            }
        }
        public sealed class NoOptions { }
        public abstract class Base : ITransport
        {
            public string Endpoint => "nowhere";
            public int VectorCount => 0;
            public virtual void Start(IVirtioDevice device) { }
            public System.Threading.Tasks.ValueTask DisposeAsync() => default;
        }
        public sealed class Throwing : Base { public Throwing() => throw new InvalidOperationException("constructor boom"); }
        public sealed class FailingStart : Base { public override void Start(IVirtioDevice device) => throw new System.IO.IOException("address already in use"); }
        {{(withDependency ? "public sealed class NeedsDep : Base { public NeedsDep() => _ = FaultyDep.Helper.Name(); }" : "")}}
        """;
}

/// <summary>Plugin folders shared by the tests of one class: the kit plugin and the sample plugin.</summary>
public sealed class PluginFixture : IDisposable
{
    public PluginFixture()
    {
        Dir = new TempDir("vism-plugins");
        TestPlugins.Compile(Dir["plugins"], "Kit", TestPlugins.KitSource);
        TestPlugins.Compile(Dir["plugins"], "Mem", TestPluginSources.Mem);
        string dep = TestPlugins.Compile(Dir["faulty-dep"], "Faulty.Dep",
            "namespace FaultyDep; public static class Helper { public static string Name() => \"x\"; }", ownFolder: false);
        TestPlugins.Compile(Dir["plugins-faulty"], "Faulty", TestPluginSources.Faulty(true), [dep]);
    }

    public TempDir Dir { get; }

    /// <summary>Search paths: the Kit and Mem plugins, the Faulty plugin, the sample plugin.</summary>
    public string[] SearchPaths => [Dir["plugins"], Dir["plugins-faulty"], TestPlugins.SamplePluginDir];

    public void Dispose() => Dir.Dispose();
}
