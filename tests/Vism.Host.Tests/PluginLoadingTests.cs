using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Testing;

namespace Vism.Host.Tests;

public sealed class PluginLoadingTests : IDisposable
{
    private readonly TempDir _dir = new("vism-pl");

    public void Dispose() => _dir.Dispose();

    private static string EventsPlugin(string ns, string kind, string extra = "", string register = "", int contract = -1) =>
        TestPlugins.Header + $$"""
        {{(contract == -2 ? "" : $"[assembly: VismPlugin({(contract == -1 ? "VismContract.Version" : contract.ToString())})]")}}
        namespace {{ns}};
        public sealed class Plugin : IVismPlugin
        {
            {{extra}}
            public void Register(IVismPluginBuilder b)
            {
                {{register}}
                b.AddEvents<Channel, Options>("{{kind}}", "from {{ns}}");
            }
        }
        public sealed class Options { }
        """ + TestPlugins.NoOpChannel("Channel");

    private static string Dep(string ns, string value) =>
        $$"""namespace {{ns}}; public static class Helper { public static string Name() => "{{value}}"; }""";

    [Fact]
    public void TheSampleThirdPartyPluginLoadsWithItsOptionsDescribed()
    {
        using PluginCatalog catalog = PluginCatalog.Load([TestPlugins.SamplePluginDir], NullLogger.Instance);
        Assert.Empty(catalog.Failures);
        Assert.True(catalog.TryGet(PluginKind.Memory, "sample-shm", out PluginRegistration? r));
        Assert.Equal("Vism.Sample.ShmMemory", r.Plugin.Name);
        Assert.StartsWith("Sample third-party plugin", r.Summary);
        OptionInfo directory = r.Options.Options.Single(o => o.Key == "directory");
        Assert.Equal(("string", "\"/dev/shm\""), (directory.TypeName, directory.Default));
        Assert.Contains("tmpfs", directory.Description);
        OptionInfo capacity = r.Options.Options.Single(o => o.Key == "capacity");
        Assert.Equal(("size", "\"256MiB\""), (capacity.TypeName, capacity.Default));
        // The contract type is the host's own: the plugin's types implement the host's interface.
        Assert.True(typeof(IMemoryBackend).IsAssignableFrom(r.Implementation));
    }

    [Fact]
    public void BrokenPluginsAreReportedByNameAndTheOthersStillLoad()
    {
        string root = _dir["plugins"];
        TestPlugins.Compile(root, "Kit", TestPlugins.KitSource);

        // Missing dependency: compiled against Dep.dll, which is not shipped in its folder.
        string depDir = _dir["dep-build"];
        string dep = TestPlugins.Compile(depDir, "MissingDep.Dep", Dep("MissingDepLib", "x"), ownFolder: false);
        TestPlugins.Compile(root, "MissingDep", EventsPlugin("MissingDep", "missing-dep", register: "_ = MissingDepLib.Helper.Name();"), [dep]);

        TestPlugins.Compile(root, "WrongContract", EventsPlugin("WrongContract", "wrong-contract", contract: VismContract.Version + 1));
        TestPlugins.Compile(root, "NoAttribute", EventsPlugin("NoAttribute", "no-attribute", contract: -2));
        TestPlugins.Compile(root, "ThrowingCtor", EventsPlugin("ThrowingCtor", "throwing-ctor", extra: "public Plugin() => throw new InvalidOperationException(\"ctor boom\");"));
        TestPlugins.Compile(root, "ThrowingRegister", EventsPlugin("ThrowingRegister", "throwing-register",
            register: "b.AddEvents<Channel, Options>(\"half-registered\", \"x\"); throw new InvalidOperationException(\"register boom\");"));
        TestPlugins.Compile(root, "ZConflict", EventsPlugin("ZConflict", "kit-events"));
        TestPlugins.Compile(root, "BadOptions", EventsPlugin("BadOptions", "bad-options").Replace("public sealed class Options { }",
            "public sealed class Options { public System.Collections.Generic.Dictionary<string, int> Map { get; set; } = new(); }"));
        TestPlugins.Compile(root, "BadKind", EventsPlugin("BadKind", "Bad_Kind"));
        Directory.CreateDirectory(_dir["plugins/NotAssembly"]);
        File.WriteAllText(_dir["plugins/NotAssembly/NotAssembly.dll"], "this is not a PE file");
        Directory.CreateDirectory(_dir["plugins/EmptyFolder"]);
        TestPlugins.Compile(root, "Healthy", EventsPlugin("Healthy", "healthy"));

        using PluginCatalog catalog = PluginCatalog.Load([root, TestPlugins.SamplePluginDir], NullLogger.Instance);

        Dictionary<string, string> failures = catalog.Failures.ToDictionary(f => f.Name, f => f.Reason);
        Assert.Contains("missing dependency MissingDep.Dep", failures["MissingDep"]);
        Assert.Contains($"built against plugin contract version {VismContract.Version + 1}", failures["WrongContract"]);
        Assert.Contains("lacks [assembly: VismPlugin", failures["NoAttribute"]);
        Assert.Contains("ctor boom", failures["ThrowingCtor"]);
        Assert.Contains("register boom", failures["ThrowingRegister"]);
        Assert.Contains("events kind 'kit-events' is already provided by plugin Kit", failures["ZConflict"]);
        Assert.Contains("Dictionary", failures["BadOptions"]);
        Assert.Contains("kind name 'Bad_Kind'", failures["BadKind"]);
        Assert.Contains("not a .NET assembly", failures["NotAssembly"]);
        Assert.Contains("no EmptyFolder.dll", failures["EmptyFolder"]);
        Assert.Equal(10, catalog.Failures.Count);

        Assert.Equal(["healthy", "kit-events"], catalog.Names(PluginKind.Events));
        Assert.Equal(["kit-transport"], catalog.Names(PluginKind.Transport));
        Assert.Equal(["sample-shm"], catalog.Names(PluginKind.Memory));
        Assert.Equal(["Healthy", "Kit", "Vism.Sample.ShmMemory"], catalog.Plugins.Select(p => p.Name).Order());
    }

    [Fact]
    public void EachPluginResolvesItsPrivateDependenciesFromItsOwnFolder()
    {
        // Two plugins ship different builds of a same-named dependency; each sees its own.
        foreach ((string name, string value) in new[] { ("PluginOne", "one"), ("PluginTwo", "two") })
        {
            string folder = _dir[name];
            string dep = TestPlugins.Compile(folder, "Shared.Dep", Dep("SharedDep", value), ownFolder: false);
            TestPlugins.Compile(_dir.Path, name,
                EventsPlugin(name, "dep-placeholder").Replace("\"dep-placeholder\"", "\"dep-\" + SharedDep.Helper.Name()"), [dep]);
        }
        using PluginCatalog catalog = PluginCatalog.Load([_dir.Path], NullLogger.Instance);
        Assert.Empty(catalog.Failures);
        Assert.Equal(["dep-one", "dep-two"], catalog.Names(PluginKind.Events));
    }

    [Fact]
    public void ASearchPathMayBeASinglePluginFolder()
    {
        TestPlugins.Compile(_dir.Path, "Solo", EventsPlugin("Solo", "solo"));
        using PluginCatalog catalog = PluginCatalog.Load([_dir["Solo"]], NullLogger.Instance);
        Assert.Equal(["solo"], catalog.Names(PluginKind.Events));
    }

    [Fact]
    public void TheSamePluginFoundTwiceIsLoadedOnce()
    {
        TestPlugins.Compile(_dir["a"], "Twice", EventsPlugin("Twice", "twice"));
        TestPlugins.Compile(_dir["b"], "Twice", EventsPlugin("Twice", "twice"));
        using PluginCatalog catalog = PluginCatalog.Load([_dir["a"], _dir["b"]], NullLogger.Instance);
        Assert.Equal(["twice"], catalog.Names(PluginKind.Events));
        Assert.Contains("already loaded from", Assert.Single(catalog.Failures).Reason);
    }
}
