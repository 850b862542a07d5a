using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Host.Config;
using Vism.Host.Plugins;

namespace Vism.Fuzz;

/// <summary>
/// The TOML config loader: the input is written as a config file and read by
/// <see cref="ConfigLoader.Parse"/>, then bound against the real in-repo plugins (transports,
/// memory backends, event channels: their options schemas and validation run too). The plugins
/// come from VISM_FUZZ_PLUGINS (scripts/fuzz.sh points it at the host's build output); without it
/// only the TOML and <c>[host]</c> layers are exercised. Rules: nothing throws, a refused file has
/// at least one error, and every error names the file, a line inside it (or 1), a column and a key.
/// </summary>
internal sealed class ConfigTarget : IFuzzTarget
{
    private const int MaxFile = 16 * 1024;

    private readonly string _dir = Directory.CreateTempSubdirectory("vism-fuzz-config").FullName;
    private readonly string _file;
    private readonly PluginCatalog _catalog;

    public ConfigTarget()
    {
        _file = Path.Combine(_dir, "vism.toml");
        string? plugins = Environment.GetEnvironmentVariable("VISM_FUZZ_PLUGINS");
        _catalog = PluginCatalog.Load(plugins is null ? [] : [plugins], NullLogger.Instance);
    }

    public void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length > MaxFile) input = input[..MaxFile];
        File.WriteAllBytes(_file, input.ToArray());
        int lines = 1 + Encoding.UTF8.GetString(input).Count(c => c == '\n');
        ConfigLoader loader = ConfigLoader.Parse(_file);
        VismConfig? config = loader.BindDevices(_catalog);
        if (config is null && !loader.Errors.Any) throw new FuzzFinding("the file was refused without an error");
        if (config is not null && loader.Errors.Any) throw new FuzzFinding("the file was accepted with errors");
        if (config is not null && config.Devices.Count == 0) throw new FuzzFinding("a config without devices was accepted");
        foreach (ConfigError e in loader.Errors.Errors)
        {
            if (e.File != _file) throw new FuzzFinding($"an error names file '{e.File}'");
            if (e.Pos.Line < 1 || e.Pos.Line > lines + 1 || e.Pos.Column < 1)
                throw new FuzzFinding($"an error at line {e.Pos.Line} column {e.Pos.Column} of a {lines}-line file: {e}");
            if (string.IsNullOrWhiteSpace(e.Key) || string.IsNullOrWhiteSpace(e.Message))
                throw new FuzzFinding($"an error without a key or message: {e}");
        }
    }

    public void Dispose()
    {
        _catalog.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
