// The vault that holds every secret of the service: the connections' credentials and tokens
// (written by the app at run time) and the app's own secrets that app settings reference.
// Access is by Azure RBAC only; no access policies.

@description('Name of the vault (3-24 letters, digits and hyphens).')
param name string

@description('Azure region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Purge protection: a deleted vault or secret cannot be purged before the retention period ends. Cannot be turned off once on.')
param enablePurgeProtection bool

@description('Days a deleted vault or secret stays recoverable. Fixed once the vault exists.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int

@description('Public network access to the vault.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

@description('Log Analytics workspace that receives the vault audit log.')
param workspaceId string

@description('Name of the secret that holds the HMAC key of the notice webhook.')
param notifyWebhookSecretName string

@description('Value for the notice webhook secret; empty leaves the secret as it is in the vault.')
@secure()
param notifyWebhookSecret string

@description('Name of the secret that holds the HMAC key of the events webhook.')
param eventsWebhookSecretName string

@description('Value for the events webhook secret; empty leaves the secret as it is in the vault.')
@secure()
param eventsWebhookSecret string

@description('Name of the secret that holds the Microsoft Graph client secret.')
param graphClientSecretName string

@description('Value for the Microsoft Graph client secret; empty leaves the secret as it is in the vault.')
@secure()
param graphClientSecret string

@description('Expiry date of the secrets this template writes (Unix time in seconds); informational, the secrets stay readable after it.')
param secretExpiry int

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The API refuses an explicit false: leave the property out to keep purge protection off.
    enablePurgeProtection: enablePurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
    }
  }
}

// Written only when a value is given: otherwise the secret already in the vault (set by the
// operator, see the README) stays as it is.
module webhookSecret 'key-vault-secret.bicep' = if (!empty(notifyWebhookSecret)) {
  name: 'secret-notify-webhook'
  params: {
    vaultName: vault.name
    name: notifyWebhookSecretName
    value: notifyWebhookSecret
    contentType: 'application/vnd.automate365.webhook-hmac-key'
    expiry: secretExpiry
  }
}

module eventsSecret 'key-vault-secret.bicep' = if (!empty(eventsWebhookSecret)) {
  name: 'secret-events-webhook'
  params: {
    vaultName: vault.name
    name: eventsWebhookSecretName
    value: eventsWebhookSecret
    contentType: 'application/vnd.automate365.webhook-hmac-key'
    expiry: secretExpiry
  }
}

module graphSecret 'key-vault-secret.bicep' = if (!empty(graphClientSecret)) {
  name: 'secret-graph-client'
  params: {
    vaultName: vault.name
    name: graphClientSecretName
    value: graphClientSecret
    contentType: 'application/vnd.microsoft.graph.client-secret'
    expiry: secretExpiry
  }
}

resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
// Versionless URIs of the secrets: addresses, not values (so no "secret" in the output names).
// A Key Vault reference to one follows the newest version.
output notifyWebhookKeyUri string = '${vault.properties.vaultUri}secrets/${notifyWebhookSecretName}'
output eventsWebhookKeyUri string = '${vault.properties.vaultUri}secrets/${eventsWebhookSecretName}'
output graphCredentialUri string = '${vault.properties.vaultUri}secrets/${graphClientSecretName}'
