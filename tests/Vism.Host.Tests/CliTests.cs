using Vism.Host.Commands;
using Vism.Testing;

namespace Vism.Host.Tests;

public sealed class CliTests : IClassFixture<PluginFixture>, IDisposable
{
    private readonly PluginFixture _plugins;
    private readonly TempDir _dir = new("vism-cli");

    public CliTests(PluginFixture plugins) => _plugins = plugins;

    public void Dispose() => _dir.Dispose();

    private async Task<(int Code, string Out, string Err)> Vism(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        string[] plugins = _plugins.SearchPaths.SelectMany(p => new[] { "--plugins", p }).ToArray();
        int code = await Cli.InvokeAsync([.. args, .. plugins], output, error);
        return (code, output.ToString(), error.ToString());
    }

    private string Write(string toml)
    {
        string file = _dir["c.toml"];
        File.WriteAllText(file, toml);
        return file;
    }

    [Fact]
    public async Task ValidateAcceptsAGoodFileAndSummarisesItsDevices()
    {
        string file = Write("""
            [host]
            socket-dir = "/tmp/vism-cli-sockets"
            [[device]]
            name = "ism0"
            [device.transport]
            kind = "kit-transport"
            [device.memory]
            kind = "sample-shm"
            """);
        (int code, string output, string error) = await Vism("validate", file);
        Assert.True(code == 0, error);
        Assert.Contains("valid, 1 device(s)", output);
        Assert.Contains("ism0: transport kit-transport, memory sample-shm, events none; 62 regions of 1MiB; endpoint /tmp/vism-cli-sockets/ism0.sock", output);
    }

    [Fact]
    public async Task ValidatePrintsEveryErrorAndExits2()
    {
        string file = Write("""
            [host]
            loops = 0
            [[device]]
            name = "ism0"
            colour = "blue"
            [device.transport]
            kind = "nope"
            [device.memory]
            kind = "sample-shm"
            """);
        (int code, string output, string error) = await Vism("validate", file);
        Assert.Equal(ExitCodes.BadConfig, code);
        Assert.Equal("", output);
        Assert.Contains($"{file}:2:9: host.loops: 0 loops: choose 1..256", error);
        Assert.Contains($"{file}:5:1: device[0].colour: unknown key 'colour'", error);
        Assert.Contains($"{file}:7:8: device[0].transport.kind: no transport plugin 'nope' is installed (installed: failing-start, kit-transport, mem, needs-dep, throwing)", error);
        Assert.Contains("3 error(s)", error);
    }

    [Fact]
    public async Task PluginsListsKindsWithOptionsTypesDefaultsAndDescriptions()
    {
        (int code, string output, _) = await Vism("plugins");
        Assert.Equal(0, code);
        Assert.Contains("transport kinds", output);
        Assert.Contains("  kit-transport: test transport", output);
        Assert.Contains("socket-path  string, default (none)", output);
        Assert.Contains("queue-size   integer, default 256", output);
        Assert.Contains("mode         one of: fast | very-slow, default \"fast\"", output);
        Assert.Contains("timeout      duration, default \"5s\"", output);
        Assert.Contains("memory kinds", output);
        Assert.Contains("  sample-shm: Sample third-party plugin", output);
        Assert.Contains("capacity   size, default \"256MiB\"", output);
        Assert.Contains("Most bytes this device's regions may hold at once", output);
    }

    [Fact]
    public async Task PluginsReportsABrokenPluginByName()
    {
        TestPlugins.Compile(_dir.Path, "Broken", TestPlugins.Header + "namespace Broken; public class X {}");
        (int code, string output, _) = await Vism("plugins", "--plugins", _dir.Path);
        Assert.Equal(0, code);
        Assert.Contains("not loaded:", output);
        Assert.Contains("plugin Broken (", output);
        Assert.Contains("not a vism plugin", output);
        Assert.Contains("kit-transport", output);
    }

    [Fact]
    public async Task AMissingPluginsDirectoryIsAnError()
    {
        (int code, _, string error) = await Vism("plugins", "--plugins", "/nonexistent/dir");
        Assert.Equal(ExitCodes.BadConfig, code);
        Assert.Contains("--plugins /nonexistent/dir: no such directory", error);
    }

    [Fact]
    public async Task VersionAndHelpArePrinted()
    {
        var output = new StringWriter();
        Assert.Equal(0, await Cli.InvokeAsync(["--version"], output, new StringWriter()));
        Assert.Equal(Cli.Version, output.ToString().Trim());

        output = new StringWriter();
        Assert.Equal(0, await Cli.InvokeAsync(["--help"], output, new StringWriter()));
        string help = output.ToString();
        foreach (string command in new[] { "run", "validate", "plugins", "status", "demo" })
            Assert.Contains($"  {command} ", help);
    }

    [Fact]
    public async Task StatusWithoutARunningHostSaysSoAndExits1()
    {
        (int code, _, string error) = await Vism("status", "--state-dir", _dir.Path);
        Assert.Equal(ExitCodes.Failed, code);
        Assert.Contains($"no host is running with state directory {_dir.Path}", error);
    }
}
