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
    public const string KitSource = Header + """
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
        public sealed class KitEvents : IEventChannel
        {
            public ulong Features => 1;
            public int QueueCount => 1;
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

/// <summary>Plugin folders shared by the tests of one class: the kit plugin and the sample plugin.</summary>
public sealed class PluginFixture : IDisposable
{
    public PluginFixture()
    {
        Dir = new TempDir("vism-plugins");
        TestPlugins.Compile(Dir.Path, "Kit", TestPlugins.KitSource);
    }

    public TempDir Dir { get; }

    /// <summary>Search paths: the kit folder's parent and the sample plugin.</summary>
    public string[] SearchPaths => [Dir.Path, TestPlugins.SamplePluginDir];

    public void Dispose() => Dir.Dispose();
}
